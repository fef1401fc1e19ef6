"""Writing the audit trail. The only writer of AuditEvent rows: each row's digest is made
here, from exactly what is stored."""

from dataclasses import asdict, dataclass, field
from datetime import datetime

from django.conf import settings

from audit.digests import event_digest
from audit.models import AuditEvent, Interaction

# A query is recorded whole up to this many characters; longer ones are cut and marked,
# so that a client cannot make the trail store whatever it sends.
MAX_QUERY = 4000
_CUT = "…[cut]"


@dataclass(frozen=True)
class AuditRecord:
    """What one access is recorded as (AuditEvent's fields, before it is a row)."""

    recorded: datetime
    interaction: Interaction
    status: int
    request_id: str = ""
    tenant: str = ""
    client_id: str = ""
    partner: str = ""
    actor: str = ""
    source_address: str = ""
    resource_type: str = ""
    resource_id: str = ""
    patients: tuple[str, ...] = field(default_factory=tuple)
    query: str = ""
    purpose: str = ""
    consent: str = ""
    consent_basis: str = ""
    scopes: str = ""
    outcome: str = ""
    latency_us: int = 0


def _text(value: str, limit: int) -> str:
    """As PostgreSQL can store it (no NUL), within `limit` characters."""
    value = value.replace("\x00", "\ufffd")
    return value if len(value) <= limit else value[: limit - len(_CUT)] + _CUT


def _fields(record: AuditRecord) -> dict[str, object]:
    limits = {f.name: f.max_length for f in AuditEvent._meta.concrete_fields if f.max_length}
    fields = asdict(record)
    for name, value in fields.items():
        if isinstance(value, str):
            fields[name] = _text(value, limits.get(name) or MAX_QUERY)
    fields["interaction"] = Interaction(record.interaction).value
    fields["patients"] = sorted({_text(p, 64) for p in record.patients})
    fields["latency_us"] = max(0, int(record.latency_us))
    fields["release"] = settings.CODE_RELEASE
    return fields


def audit_write(*, record: AuditRecord) -> AuditEvent:
    """Store one event in the current schema (the caller's tenant, or public) and return
    it. Raises what the database raises: an access that cannot be recorded must fail."""
    fields = _fields(record)
    return AuditEvent.objects.create(**fields, digest=event_digest(fields))
