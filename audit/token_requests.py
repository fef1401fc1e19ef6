"""The audit event of an OAuth token or revocation request (tenants/api.py).

The view notes on the request what it learned: the authenticated client
(`audit_client`), and for an issued token its tenant, scopes and purpose
(`audit_issued`). A request that got that far is recorded in the tenant's trail; every
other one (bad credentials, a refused grant, a throttled client) in the public trail.
No secret is recorded: the query holds the path only, never the form.
"""

import json
import time
from typing import Any

from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from audit.models import Interaction
from audit.services import AuditRecord, audit_write
from fhirplatform.db.faults import database_fault
from fhirplatform.errors import FhirError, IssueCode, fhir_error_json

PUBLIC = "public"


def _outcome(response: HttpResponse) -> str:
    """An OAuth error code (`invalid_client`), or an OperationOutcome's code/reason."""
    if response.status_code < 400:
        return ""
    try:
        body: Any = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return ""
    if not isinstance(body, dict):
        return ""
    if "error" in body:
        return str(body["error"])
    issue = (body.get("issue") or [{}])[0]
    codings = (issue.get("details") or {}).get("coding") or [{}]
    reason = codings[0].get("code")
    return f"{issue.get('code', '')}/{reason}" if reason else str(issue.get("code", ""))


def token_request_audited(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    """Record the request; the response as it was, or a 503 when it cannot be recorded
    (an issued token is then never handed out)."""
    client = getattr(request, "audit_client", None)
    issued = getattr(request, "audit_issued", None)
    tenant = issued.tenant if issued is not None else None
    started = getattr(request, "started", None)
    record = AuditRecord(
        recorded=timezone.now(),
        interaction=Interaction.TOKEN,
        status=response.status_code,
        request_id=str(getattr(request, "request_id", "")),
        tenant=tenant.slug if tenant else "",
        client_id=client.client_id if client else "",
        partner=client.partner.slug if client else "",
        source_address=request.META.get("REMOTE_ADDR", ""),
        query=request.path,
        purpose=(issued.purpose or "") if issued else "",
        scopes=issued.scope if issued else "",
        outcome=_outcome(response),
        latency_us=int((time.perf_counter() - started) * 1_000_000) if started else 0,
    )
    try:
        audit_write(record=record, schema=tenant.schema_name if tenant else PUBLIC)
    except DatabaseError as error:
        unrecorded = database_fault(error) or FhirError(
            503, IssueCode.TRANSIENT, "The request could not be recorded; retry later"
        )
        return fhir_error_json(unrecorded)
    return response
