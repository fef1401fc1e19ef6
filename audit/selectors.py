"""Reading the audit trail. Every read enters the trail's own schema (a tenant's, or
public); what reads it records that it did (audit/services.py)."""

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from audit.digests import DIGEST_FIELDS
from audit.models import AuditEvent

_CHUNK = 2000


def event_as_dict(event: dict[str, Any]) -> dict[str, Any]:
    """An event row as JSON: its id, every recorded field, its digest."""
    out: dict[str, Any] = {"id": event["id"]}
    for name in (*DIGEST_FIELDS, "digest"):
        value = event[name]
        out[name] = value.isoformat() if isinstance(value, datetime) else value
    return out


def events_between(*, since: datetime, until: datetime) -> Iterator[dict[str, Any]]:
    """The current schema's events recorded in [since, until), oldest first, streamed."""
    rows = AuditEvent.objects.filter(recorded__gte=since, recorded__lt=until).order_by(
        "recorded", "id"
    )
    for row in rows.values("id", *DIGEST_FIELDS, "digest").iterator(_CHUNK):
        yield event_as_dict(row)
