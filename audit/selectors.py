"""Reading the audit trail. Every read enters the trail's own schema (a tenant's, or
public); what reads it records that it did (audit/services.py)."""

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from django.db.models import Q

from audit.digests import DIGEST_FIELDS
from audit.models import AuditArchive, AuditEvent
from fhirplatform.schemas import tenant_schema
from tenants.models import Tenant

PAGE = 100

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


def trail_page(*, tenant: Tenant, filters: dict[str, Any]) -> list[AuditEvent]:
    """One page (PAGE events, newest first) of the tenant's trail, read in its schema:
    `filters` are TrailFilterForm's cleaned data; `before` pages back by event id."""
    query = Q()
    for name in ("client_id", "partner", "actor", "interaction"):
        if filters.get(name):
            query &= Q(**{name: filters[name]})
    if filters.get("patient"):
        query &= Q(patients__contains=[filters["patient"]])
    if filters.get("outcome") == "ok":
        query &= Q(status__lt=400)
    elif filters.get("outcome") == "refused":
        query &= Q(status__gte=400)
    if filters.get("since"):
        query &= Q(recorded__gte=filters["since"])
    if filters.get("until"):
        query &= Q(recorded__lt=filters["until"])
    if filters.get("before"):
        query &= Q(id__lt=filters["before"])
    with tenant_schema(tenant):
        return list(AuditEvent.objects.filter(query).order_by("-id")[:PAGE])


def trail_archives(*, tenant: Tenant) -> list[AuditArchive]:
    """The tenant's archives, newest first (read in its schema)."""
    with tenant_schema(tenant):
        return list(AuditArchive.objects.order_by("-seq"))
