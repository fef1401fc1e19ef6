"""Bulk export jobs and the files they wrote, in the tenant's schema (the fhir app's
tables: a tenant's jobs are dropped with its schema).

A job is the whole request, fixed at kick-off: who asked (client, grant, the scopes the
export stands on), what (level, types, filters, patients) and as of when
(`transaction_time`). The worker writes files in order and records each one only once it
is complete in storage: a file without a row is an orphan of a killed run, never output.
"""

import uuid

from django.contrib.postgres.fields import ArrayField
from django.db import models


class ExportStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


# A job in one of these holds a worker, or is waiting for one: it counts against the caps.
ACTIVE_STATUSES = (ExportStatus.QUEUED, ExportStatus.RUNNING)


class ExportLevel(models.TextChoices):
    SYSTEM = "system", "System"
    PATIENT = "patient", "Patient"
    GROUP = "group", "Group"


class FileKind(models.TextChoices):
    OUTPUT = "output", "Output"
    ERROR = "error", "Error"


class ExportJob(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    client_id = models.CharField(max_length=64)  # ApiClient.client_id
    grant_pk = models.PositiveIntegerField()  # the Grant it runs under, checked again by the worker
    scopes = models.TextField()  # the token's scopes at kick-off, space-separated
    purpose = models.CharField(max_length=64, blank=True)
    level = models.CharField(max_length=10, choices=ExportLevel.choices)
    group_id = models.CharField(max_length=64, blank=True)
    resource_types = ArrayField(models.CharField(max_length=64))  # in export order
    since = models.DateTimeField(null=True, blank=True)
    # {type: [search query string, ...]}: a type with filters exports what any of them matches.
    type_filters = models.JSONField(default=dict, blank=True)
    elements = ArrayField(models.CharField(max_length=200), default=list, blank=True)
    # Patient-level and Group exports: the patients whose compartments are exported.
    patients = ArrayField(models.CharField(max_length=64), default=list, blank=True)
    output_format = models.CharField(max_length=40)
    request_url = models.TextField()
    # What a lenient kick-off left out, shown in the manifest's error file.
    request_issues = models.JSONField(default=list, blank=True)
    status = models.CharField(
        max_length=10, choices=ExportStatus.choices, default=ExportStatus.QUEUED
    )
    transaction_time = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    # A running job's worker renews this; a stale one is a worker that died (runner.py).
    # A queued job's: when it was last sent to the workers (a stale one: its message lost).
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    # Where the next file starts: the index into resource_types, and the last row written
    # in (last_updated, pk) order (runner.py Position).
    type_index = models.PositiveSmallIntegerField(default=0)
    after_updated = models.DateTimeField(null=True, blank=True)
    after_pk = models.BigIntegerField(default=0)
    written = models.PositiveBigIntegerField(default=0)
    # {type: resources left out under consent}: counts only, never ids.
    denied = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        indexes = [models.Index(fields=["status", "client_id"])]

    def __str__(self) -> str:
        return f"export {self.id} ({self.status})"


class ExportFile(models.Model):
    job = models.ForeignKey(ExportJob, on_delete=models.CASCADE, related_name="files")
    kind = models.CharField(max_length=10, choices=FileKind.choices, default=FileKind.OUTPUT)
    resource_type = models.CharField(max_length=64)
    sequence = models.PositiveIntegerField()
    name = models.CharField(max_length=120)  # the file's name in its URL
    storage_name = models.CharField(max_length=300)  # its name in the export storage
    count = models.PositiveIntegerField()
    size = models.PositiveBigIntegerField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "name"], name="export_file_job_name")]
        ordering = ["kind", "sequence"]

    def __str__(self) -> str:
        return f"{self.job_id}/{self.name}"
