"""Writing the audit trail. The only writer of AuditEvent rows: each row's digest is made
here, from exactly what is stored."""

import time
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest
from django.utils import timezone
from django_tenants.utils import quote_schema_name

from audit.digests import DIGEST_FIELDS, event_digest
from audit.models import AuditEvent, Interaction
from fhirplatform.db.faults import database_fault
from fhirplatform.db.named import schema_named_cursor
from fhirplatform.errors import FhirError, IssueCode

# A query is recorded whole up to this many characters; longer ones are cut and marked,
# so that a client cannot make the trail store whatever it sends.
MAX_QUERY = 4000
_CUT = "…[cut]"
# Rows per INSERT of many events: 21 parameters each, well below PostgreSQL's 65,535.
INSERT_ROWS = 1000


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


def outcome_text(body: Any) -> str:
    """What a refused or failed answer's body says, as an event's `outcome`: an OAuth error
    code (`invalid_client`), or an OperationOutcome's first issue code with its reason
    code when it has one (`throttled/client-rate`, `forbidden/consent`)."""
    if not isinstance(body, dict):
        return ""
    if "error" in body:
        return str(body["error"])
    issues = body.get("issue")
    if not isinstance(issues, list) or not issues or not isinstance(issues[0], dict):
        return ""
    issue = issues[0]
    code = str(issue.get("code", ""))
    codings = (issue.get("details") or {}).get("coding") or []
    reason = codings[0].get("code") if codings and isinstance(codings[0], dict) else None
    return f"{code}/{reason}" if reason else code


def request_basics(request: HttpRequest) -> dict[str, Any]:
    """An event's fields every request gives alike: when, which request (its
    X-Request-ID), from where, and how long since it arrived."""
    started = getattr(request, "started", None)
    return {
        "recorded": timezone.now(),
        "request_id": str(getattr(request, "request_id", "")),
        "source_address": request.META.get("REMOTE_ADDR", ""),
        "latency_us": int((time.perf_counter() - started) * 1_000_000) if started else 0,
    }


_RECORDED = tuple(f.name for f in fields(AuditRecord))
_LIMITS = {f.name: f.max_length for f in AuditEvent._meta.concrete_fields if f.max_length}


def _text(value: str, limit: int) -> str:
    """As PostgreSQL can store it (no NUL), within `limit` characters."""
    value = value.replace("\x00", "\ufffd")
    return value if len(value) <= limit else value[: limit - len(_CUT)] + _CUT


def _fields(record: AuditRecord) -> dict[str, Any]:
    values: dict[str, Any] = {name: getattr(record, name) for name in _RECORDED}
    for name, value in values.items():
        if isinstance(value, str):
            values[name] = _text(value, _LIMITS.get(name) or MAX_QUERY)
    values["interaction"] = Interaction(record.interaction).value
    values["patients"] = sorted({_text(p, 64) for p in record.patients})
    values["latency_us"] = max(0, int(record.latency_us))
    values["release"] = settings.CODE_RELEASE
    return values


_COLUMNS = (*DIGEST_FIELDS, "digest")


def audit_unrecorded(error: DatabaseError) -> FhirError:
    """What an access whose event the database would not take is answered: that database
    fault's 503, or a 503 saying the access was not carried out."""
    return database_fault(error) or FhirError(
        503,
        IssueCode.TRANSIENT,
        "The access could not be recorded in the audit trail, so it was not carried out; "
        "retry later",
        headers={"Retry-After": "1"},
    )


def _insert(schema: str, rows: list[list[Any]]) -> list[int]:
    """One INSERT of `rows` into `schema`'s trail, naming its schema (no search_path
    needed); their ids."""
    table = f"{quote_schema_name(schema)}.{AuditEvent._meta.db_table}"
    marks = f"({', '.join(['%s'] * len(_COLUMNS))})"
    sql = (
        f"INSERT INTO {table} ({', '.join(_COLUMNS)}) "
        f"VALUES {', '.join([marks] * len(rows))} RETURNING id"
    )
    with schema_named_cursor() as cursor:
        cursor.execute(sql, [value for row in rows for value in row])
        return [int(event_id) for (event_id,) in cursor.fetchall()]


def _row(record: AuditRecord) -> list[Any]:
    fields = _fields(record)
    fields["digest"] = event_digest(fields)
    return [fields[column] for column in _COLUMNS]


def audit_write(*, record: AuditRecord, schema: str) -> int:
    """Store one event in `schema`'s trail (the caller's tenant's, or "public") and return
    its id: one INSERT naming its schema, so it needs no search_path. Inside a transaction
    it commits with it (a FHIR write and its event); outside one it is committed when this
    returns. Raises what the database raises: an access that cannot be recorded fails."""
    return _insert(schema, [_row(record)])[0]


def audit_write_many(*, records: list[AuditRecord], schema: str) -> None:
    """Store many events in `schema`'s trail, INSERT_ROWS to a statement (deferred.py)."""
    for start in range(0, len(records), INSERT_ROWS):
        _insert(schema, [_row(record) for record in records[start : start + INSERT_ROWS]])
