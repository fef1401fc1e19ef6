"""The audit event of an OAuth token or revocation request (tenants/api.py).

The view notes on the request what it learned: the authenticated client
(`audit_client`), and for an issued token its tenant, scopes and purpose
(`audit_issued`). A request that got that far is recorded in the tenant's trail; every
other one (bad credentials, a refused grant, a throttled client) in the public trail.
No secret is recorded: the query holds the path only, never the form.
"""

import json

from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse

from audit.models import Interaction
from audit.services import (
    AuditRecord,
    audit_unrecorded,
    audit_write,
    outcome_text,
    request_basics,
)
from fhirplatform.errors import fhir_error_json

PUBLIC = "public"


def _outcome(response: HttpResponse) -> str:
    if response.status_code < 400:
        return ""
    try:
        return outcome_text(json.loads(response.content))
    except (ValueError, UnicodeDecodeError):
        return ""


def token_request_audited(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    """Record the request; the response as it was, or a 503 when it cannot be recorded
    (an issued token is then never handed out)."""
    client = getattr(request, "audit_client", None)
    issued = getattr(request, "audit_issued", None)
    tenant = issued.tenant if issued is not None else None
    record = AuditRecord(
        **request_basics(request),
        interaction=Interaction.TOKEN,
        status=response.status_code,
        tenant=tenant.slug if tenant else "",
        client_id=client.client_id if client else "",
        partner=client.partner.slug if client else "",
        query=request.path,
        purpose=(issued.purpose or "") if issued else "",
        scopes=issued.scope if issued else "",
        outcome=_outcome(response),
    )
    try:
        audit_write(record=record, schema=tenant.schema_name if tenant else PUBLIC)
    except DatabaseError as error:
        return fhir_error_json(audit_unrecorded(error))
    return response
