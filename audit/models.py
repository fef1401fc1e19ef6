"""The audit trail: one row per access, append-only.

The app is in both SHARED_APPS and TENANT_APPS, so each tenant schema has its own table
(events about that tenant's data, recorded under the caller's tenant) and the public
schema has one too (refusals with no trusted tenant, and governance actions).

PostgreSQL refuses UPDATE, DELETE and TRUNCATE on it for every role (migration 0001): the
only way to change a row is to disable the trigger, which only a superuser can, and the
row's digest (digests.py) is what then shows the change.
"""

from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex
from django.db import models


class Interaction(models.TextChoices):
    """What the access was (BALP's subtype): a FHIR interaction, a token request, or an
    operator's or partner's action on governance or tenant data."""

    READ = "read"
    VREAD = "vread"
    SEARCH = "search"
    HISTORY = "history"
    CREATE = "create"
    UPDATE = "update"
    PATCH = "patch"
    DELETE = "delete"
    BATCH = "batch"
    TRANSACTION = "transaction"
    EXPORT = "export"
    TOKEN = "token"  # noqa: S105 - an interaction's name, not a secret
    CAPABILITIES = "capabilities"
    ADMIN = "admin"


class AuditEvent(models.Model):
    """One access, with the fields of the IHE Basic Audit Log Patterns.

    Text fields are blank rather than null when they do not apply, so that the digest of a
    row has one spelling. `xact` is the writing transaction's id (set by PostgreSQL): the
    sealer takes only events of transactions that have ended."""

    recorded = models.DateTimeField()
    xact = models.BigIntegerField(
        editable=False,
        db_index=True,
        db_default=models.Func(function="txid_current", output_field=models.BigIntegerField()),
    )
    request_id = models.CharField(max_length=64, blank=True)
    tenant = models.CharField(max_length=63, blank=True, help_text="The caller's tenant slug")
    client_id = models.CharField(max_length=64, blank=True)
    partner = models.CharField(max_length=100, blank=True, help_text="The partner's slug")
    actor = models.CharField(max_length=150, blank=True, help_text="A person: an admin user")
    source_address = models.CharField(max_length=64, blank=True)
    interaction = models.CharField(max_length=16, choices=Interaction.choices)
    resource_type = models.CharField(max_length=64, blank=True)
    resource_id = models.CharField(max_length=64, blank=True)
    patients = ArrayField(models.CharField(max_length=64), default=list, blank=True)
    query = models.TextField(blank=True)
    purpose = models.CharField(max_length=64, blank=True)
    consent = models.CharField(max_length=10, blank=True, help_text="permit, deny or blank")
    consent_basis = models.CharField(
        max_length=200, blank=True, help_text="The deciding Consent or policy, and its version"
    )
    scopes = models.TextField(blank=True)
    status = models.PositiveSmallIntegerField()
    outcome = models.CharField(
        max_length=64, blank=True, help_text="OperationOutcome code or throttle reason"
    )
    latency_us = models.PositiveBigIntegerField(default=0)
    release = models.CharField(max_length=64, blank=True, help_text="The code release")
    digest = models.CharField(max_length=64, editable=False)

    class Meta:
        ordering = ["-id"]
        # Each index costs every audited request: time (queries are by period first) and
        # patients (who saw this patient's data); xact serves the sealer.
        indexes = [
            models.Index(fields=["recorded", "id"], name="audit_event_time"),
            GinIndex(fields=["patients"], name="audit_event_patients"),
        ]

    def __str__(self) -> str:
        return f"{self.recorded:%Y-%m-%d %H:%M:%S} {self.interaction} {self.status}"


class AuditSeal(models.Model):
    """A block of events, sealed by the sealer (sealing.py): the chain over its events'
    ids and digests, and this seal's digest, which the next seal names. Append-only."""

    seq = models.PositiveBigIntegerField(unique=True)
    sealed_at = models.DateTimeField()
    # Every transaction with a smaller id had ended when the block was taken: an event of
    # one of them that is in no seal was not written by the application.
    horizon = models.BigIntegerField()
    count = models.PositiveIntegerField()
    chain_before = models.CharField(max_length=64)  # the previous seal's `chain`
    chain = models.CharField(max_length=64)  # after the block's last event
    previous = models.CharField(max_length=64, blank=True)  # the previous seal's digest
    digest = models.CharField(max_length=64)

    class Meta:
        ordering = ["seq"]

    def __str__(self) -> str:
        return f"seal {self.seq} ({self.count} events)"


class AuditSealEntry(models.Model):
    """An event's place in a seal, and its digest when it was sealed. No foreign key to
    the event: a deleted event must show as missing, not stop the deletion."""

    event_id = models.BigIntegerField(unique=True)
    seal_seq = models.PositiveBigIntegerField()
    position = models.PositiveIntegerField()
    digest = models.CharField(max_length=64)

    class Meta:
        ordering = ["seal_seq", "position"]
        constraints = [
            models.UniqueConstraint(fields=["seal_seq", "position"], name="audit_seal_position")
        ]

    def __str__(self) -> str:
        return f"event {self.event_id} in seal {self.seal_seq}"


class AuditArchive(models.Model):
    """A run of the oldest seals, moved out of the live tables into one compressed NDJSON
    file (archiving.py): the only way an event leaves them. PostgreSQL lets a DELETE of
    events, entries or seals through only when an archive on record covers them
    (migration 0002), and audit_verify continues the chain from the last archive and,
    with --archive, checks every file against its record. Append-only."""

    seq = models.PositiveBigIntegerField(unique=True)
    archived_at = models.DateTimeField()
    first_seal = models.PositiveBigIntegerField()
    last_seal = models.PositiveBigIntegerField()
    events = models.PositiveBigIntegerField()
    horizon = models.BigIntegerField()  # the last seal's
    chain_before = models.CharField(max_length=64)  # the first seal's
    chain = models.CharField(max_length=64)  # the last seal's
    seal_digest = models.CharField(max_length=64)  # the last seal's, which the next names
    path = models.CharField(max_length=300, help_text="Under AUDIT_ARCHIVE_DIR")
    sha256 = models.CharField(max_length=64, help_text="Of the file's bytes")
    size = models.PositiveBigIntegerField()
    previous = models.CharField(max_length=64, blank=True)  # the previous archive's digest
    digest = models.CharField(max_length=64)

    class Meta:
        ordering = ["seq"]

    def __str__(self) -> str:
        return f"archive {self.seq}: seals {self.first_seal}-{self.last_seal}"
