"""The audit event of a FHIR request, as the pipeline writes it (the trail is audit/).

One event for every request that reaches a FHIR view, refusals included:

- **where**: the caller's tenant's trail once the token is good, also when it named
  another tenant's URL (the event is the caller's, never the URL tenant's); the public
  trail when no tenant is trusted (no token, a refused one, an unknown tenant);
- **when**: a request whose tenant part ran in a transaction and answered writes its
  event in that transaction, so that a write and its event commit together or not at
  all; every other event is written at the exit, committed before the response leaves;
- **or not at all**: an event that cannot be written fails the request with a 503
  (`transient`), and a write is rolled back with it;
- **the one exception**: a request the refusal gate answers 429 before Django runs has its
  event written just after its answer, within a second (audit_gate_refusal,
  audit/deferred.py): it showed and changed nothing, and writing first would hand a flood
  the capacity the gate keeps from it.

The event names the caller (client, partner, scopes, purpose), what was asked (the
interaction, the resource, the path and query), every patient whose data the answer
showed or the write touched, the consent decision and what decided it, and the outcome
(status, OperationOutcome code and reason, latency).
"""

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.handlers.wsgi import get_path_info
from django.db import DatabaseError
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.utils import timezone
from django.utils.encoding import escape_uri_path, iri_to_uri

from audit.deferred import audit_deferred
from audit.models import Interaction as AuditInteraction
from audit.services import (
    AuditRecord,
    audit_unrecorded,
    audit_write,
    outcome_text,
    request_basics,
)
from fhirplatform.errors import FhirError
from tenants.scopes import Interaction, scopes_text

if TYPE_CHECKING:
    from consent.enforcement import ConsentGuard
    from tenants.tokens import Caller

PUBLIC = "public"

_INTERACTIONS = {
    Interaction.READ: AuditInteraction.READ,
    Interaction.VREAD: AuditInteraction.VREAD,
    Interaction.SEARCH: AuditInteraction.SEARCH,
    Interaction.HISTORY_INSTANCE: AuditInteraction.HISTORY,
    Interaction.HISTORY_TYPE: AuditInteraction.HISTORY,
    Interaction.HISTORY_SYSTEM: AuditInteraction.HISTORY,
    Interaction.CREATE: AuditInteraction.CREATE,
    Interaction.UPDATE: AuditInteraction.UPDATE,
    Interaction.PATCH: AuditInteraction.PATCH,
    Interaction.DELETE: AuditInteraction.DELETE,
    Interaction.EXPORT: AuditInteraction.EXPORT,
}
# What a request refused before its view said what it is was, by its method.
_BY_METHOD = {
    "GET": AuditInteraction.READ,
    "HEAD": AuditInteraction.READ,
    "POST": AuditInteraction.CREATE,
    "PUT": AuditInteraction.UPDATE,
    "PATCH": AuditInteraction.PATCH,
    "DELETE": AuditInteraction.DELETE,
}


@dataclass
class AuditState:
    """The audit part of one request: what the handlers report, and whether its event is
    written already (in the tenant part's transaction)."""

    interaction: AuditInteraction | None = None
    resource_type: str = ""
    resource_id: str = ""  # a created resource's id (the URL names none)
    patients: set[str] = field(default_factory=set)
    written: bool = False

    def attempt(self) -> None:
        """A new run of the tenant part: what a rolled-back one saw and wrote is gone."""
        self.patients.clear()
        self.resource_id = ""
        self.written = False

    def saw(self, patients: Any) -> None:
        """Patients whose data the answer shows or the request wrote."""
        self.patients.update(p for p in patients or () if p)


def _interaction(
    state: AuditState, interaction: Interaction | None, method: str
) -> AuditInteraction:
    if state.interaction is not None:
        return state.interaction
    if interaction is not None:
        return _INTERACTIONS.get(interaction, AuditInteraction.READ)
    return _BY_METHOD.get(method, AuditInteraction.READ)


def _outcome(response: HttpResponseBase) -> str:
    if response.status_code < 400:
        return ""
    return outcome_text(getattr(response, "data", None))


def _consent(guard: "ConsentGuard | None") -> tuple[str, str]:
    """permit or deny, and what decided: the deciding Consent and its version, or the
    policy version and its rule."""
    if guard is None or guard.last_decision is None:
        return "", ""
    decision = guard.last_decision
    effect = "deny" if guard.denials else decision.effect.value
    if decision.consent_id:
        basis = f"Consent/{decision.consent_id}"
        if decision.consent_version:
            basis += f"/_history/{decision.consent_version}"
    else:
        basis = f"policy v{decision.policy_version} ({decision.rule})"
    if guard.denials:
        basis += f"; {guard.denials} denied"
    return effect, basis


def _caller_fields(caller: "Caller") -> dict[str, Any]:
    """An event's fields that name who asked: the token's tenant, client, partner, scopes
    and purpose."""
    return {
        "tenant": caller.tenant.slug,
        "client_id": caller.client.client_id,
        "partner": caller.partner_slug,
        "scopes": scopes_text(caller.scopes),
        "purpose": caller.purpose or "",
    }


def audit_gate_refusal(
    *,
    caller: "Caller",
    interaction: Interaction,
    resource_type: str,
    resource_id: str,
    error: FhirError,
    environ: dict[str, Any],
    request_id: str,
    started: float,
) -> None:
    """The event of a request the refusal gate answered before Django (its 429): the
    caller's trail, like the pipeline's refusals, written just after (audit/deferred.py)."""
    if settings.AUDIT_DISABLED_FOR_BENCHMARK:
        return
    query = environ.get("QUERY_STRING", "")
    path = escape_uri_path(get_path_info(environ)) + (f"?{iri_to_uri(query)}" if query else "")
    record = AuditRecord(
        **_caller_fields(caller),
        recorded=timezone.now(),
        request_id=request_id,
        source_address=environ.get("REMOTE_ADDR", ""),
        latency_us=int((time.perf_counter() - started) * 1_000_000),
        interaction=_INTERACTIONS.get(interaction, AuditInteraction.READ),
        status=error.status,
        resource_type=resource_type,
        resource_id=resource_id,
        query=path,
        outcome=outcome_text(error.outcome()),
    )
    audit_deferred(record=record, schema=caller.tenant.schema_name)


def audit_event_write(
    *,
    audit: AuditState,
    caller: "Caller | None",
    interaction: Interaction | None,
    resource_type: str,
    resource_id: str,
    guard: "ConsentGuard | None",
    request: HttpRequest,
    response: HttpResponseBase,
) -> None:
    """Write the request's event into the caller's trail (public without one), once.
    Raises the 503 of audit_unrecorded when the database will not take it."""
    if audit.written or settings.AUDIT_DISABLED_FOR_BENCHMARK:
        return
    consent, basis = _consent(guard)
    record = AuditRecord(
        **request_basics(request),
        **(_caller_fields(caller) if caller else {}),
        interaction=_interaction(audit, interaction, request.method or ""),
        status=response.status_code,
        resource_type=audit.resource_type or resource_type,
        resource_id=audit.resource_id or resource_id,
        patients=tuple(audit.patients),
        query=request.get_full_path(),
        consent=consent,
        consent_basis=basis,
        outcome=_outcome(response),
    )
    schema = caller.tenant.schema_name if caller else PUBLIC
    try:
        audit_write(record=record, schema=schema)
    except DatabaseError as error:
        raise audit_unrecorded(error) from error
    audit.written = True
