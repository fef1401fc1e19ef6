"""Tenant-schema FHIR store: current resources, their full history, and search indexes.

Search index tables are owned by fhirplatform/fhir/search (one row per extracted value,
pointing at the current Resource row); history rows are never updated or deleted.
"""

from django.db import models


class Resource(models.Model):
    """The current version of one resource. A delete keeps the row with `deleted=True`."""

    resource_type = models.CharField(max_length=64)
    logical_id = models.CharField(max_length=64)
    version_id = models.PositiveIntegerField()
    last_updated = models.DateTimeField()
    deleted = models.BooleanField(default=False)
    content = models.JSONField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["resource_type", "logical_id"], name="resource_type_logical_id"
            )
        ]
        indexes = [models.Index(fields=["resource_type", "last_updated", "id"])]

    def __str__(self) -> str:
        return f"{self.resource_type}/{self.logical_id} v{self.version_id}"


class ResourceVersion(models.Model):
    """Every version ever written, including deletes (method DELETE, content null)."""

    resource = models.ForeignKey(Resource, on_delete=models.CASCADE, related_name="versions")
    resource_type = models.CharField(max_length=64)
    logical_id = models.CharField(max_length=64)
    version_id = models.PositiveIntegerField()
    last_updated = models.DateTimeField()
    method = models.CharField(max_length=8)  # POST, PUT, PATCH, DELETE
    content = models.JSONField(null=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["resource_type", "logical_id", "version_id"], name="version_unique"
            )
        ]
        indexes = [
            models.Index(fields=["last_updated", "id"]),
            models.Index(fields=["resource_type", "last_updated", "id"]),
        ]

    def __str__(self) -> str:
        return f"{self.resource_type}/{self.logical_id}/_history/{self.version_id}"
