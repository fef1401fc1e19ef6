"""Tenant-schema FHIR store: current resources, their full history, and search indexes.

Search index tables are owned by fhirplatform/fhir/search (one row per extracted value,
pointing at the current Resource row); history rows are never updated or deleted.

Every current and history row carries what consent is decided on, so that a search can
filter in SQL and a read can decide from its one row: `compartment`, the ids of the
patients whose compartment the resource is in (fhirplatform/fhir/compartments.py), and
`security_labels`, its meta.security codes.
"""

import re
from enum import StrEnum

from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex
from django.db import models

from fhirplatform.fhir.numbers import ExactJSONDecoder
from fhirplatform.resource_types import TYPE_CHARS

# A FHIR id (R4 `id` datatype): what a stored logical_id and a version id may be. Every
# check of an id, and every reference pattern, is built from this one definition.
ID_CHARS = r"[A-Za-z0-9\-.]{1,64}"
# A relative reference to a stored resource, `Type/id` or `Type/id/_history/version`
# (match it with fullmatch).
RELATIVE_REFERENCE = re.compile(
    rf"(?P<type>{TYPE_CHARS})/(?P<id>{ID_CHARS})(?:/_history/(?P<version>{ID_CHARS}))?"
)
_ID = re.compile(ID_CHARS)


def id_valid(value: str) -> bool:
    """Whether `value` is a FHIR id (1-64 of A-Z a-z 0-9 - .)."""
    return _ID.fullmatch(value) is not None


class Method(StrEnum):
    """The HTTP method a version was written with (ResourceVersion.method)."""

    POST = "POST"
    PUT = "PUT"
    PATCH = "PATCH"
    DELETE = "DELETE"


class Resource(models.Model):
    """The current version of one resource. A delete keeps the row with `deleted=True`."""

    resource_type = models.CharField(max_length=64)
    logical_id = models.CharField(max_length=64)
    version_id = models.PositiveIntegerField()
    last_updated = models.DateTimeField()
    deleted = models.BooleanField(default=False)
    content = models.JSONField(decoder=ExactJSONDecoder)  # numbers as written (numbers.py)
    # A deleted resource keeps the compartment and labels of its last content.
    compartment = ArrayField(models.CharField(max_length=64), default=list, blank=True)
    security_labels = ArrayField(models.CharField(max_length=64), default=list, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["resource_type", "logical_id"], name="resource_type_logical_id"
            )
        ]
        indexes = [
            models.Index(fields=["resource_type", "last_updated", "id"]),
            # Consent filters of searches: `compartment && ARRAY[...]`, `compartment <@ ...`.
            GinIndex(fields=["compartment"], name="resource_compartment_gin"),
        ]

    def __str__(self) -> str:
        return f"{self.resource_type}/{self.logical_id} v{self.version_id}"


class ResourceVersion(models.Model):
    """Every version ever written, including deletes (method DELETE, content null)."""

    resource = models.ForeignKey(Resource, on_delete=models.CASCADE, related_name="versions")
    resource_type = models.CharField(max_length=64)
    logical_id = models.CharField(max_length=64)
    version_id = models.PositiveIntegerField()
    last_updated = models.DateTimeField()
    method = models.CharField(max_length=8)  # a Method
    content = models.JSONField(null=True, decoder=ExactJSONDecoder)
    # A DELETE version (no content) keeps those of the version it deletes.
    compartment = ArrayField(models.CharField(max_length=64), default=list, blank=True)
    security_labels = ArrayField(models.CharField(max_length=64), default=list, blank=True)

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


# Bulk export's tables are the fhir app's too (tenant schema): defined beside their code.
from fhirplatform.fhir.export.models import ExportFile, ExportJob  # noqa: E402, F401
