"""The trail as FHIR AuditEvent resources (after IHE BALP), and their search.

Served at /fhir/<tenant>/AuditEvent (fhirplatform/fhir/audit_views.py) from the caller's
tenant's trail, read-only. One event is one AuditEvent, its id the event's id:

- `type` rest; `subtype` the interaction (restful-interaction codes; `token`, `export`
  and `admin` from the platform's own system); `action` C, R, U, D or E;
- `recorded`; `outcome` 0 (answered), 4 (refused: 4xx), 8 (failed: 5xx), and
  `outcomeDesc` the status and OperationOutcome code;
- `purposeOfEvent` the purpose of use;
- `agent`: the client (requestor, with its address and the consent basis as its policy),
  and the person for admin actions;
- `entity`: each patient (role 1), the resource the URL named (role 4), and the query.

Search: `date` (recorded, with prefixes), `agent` (a client id), `patient` (an id or
Patient/id), `entity` (Type/id), `action`, `outcome`, `subtype`; `_count`; newest first,
paged by a signed cursor. Other parameters are a 400 (`not-supported`).
"""

import base64
from typing import Any

from django.db.models import Q

from audit.models import AuditEvent, Interaction
from fhirplatform.errors import FhirError, IssueCode
from fhirplatform.fhir.paging import count_parse
from fhirplatform.fhir.search.query import Criterion, bad_value, instant_value_q, split_values
from fhirplatform.fhir.validation import text_storable

CLIENT_ID_SYSTEM = "urn:fhirplatform:client-id"
PLATFORM_SUBTYPE = "https://fhirplatform.dev/CodeSystem/audit-subtype"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
_PLATFORM_ONLY = {Interaction.TOKEN, Interaction.EXPORT, Interaction.ADMIN}
_ACTION = {
    Interaction.CREATE: "C",
    Interaction.UPDATE: "U",
    Interaction.PATCH: "U",
    Interaction.DELETE: "D",
    Interaction.BATCH: "E",
    Interaction.TRANSACTION: "E",
    Interaction.TOKEN: "E",
    Interaction.EXPORT: "E",
    Interaction.ADMIN: "E",
}
SEARCH_PARAMETERS = ("date", "agent", "patient", "entity", "action", "outcome", "subtype")


def _outcome_code(status: int) -> str:
    return "0" if status < 400 else "4" if status < 500 else "8"


def audit_event_resource(event: AuditEvent) -> dict[str, Any]:
    """The event as a FHIR R4 AuditEvent."""
    interaction = Interaction(event.interaction)
    subtype_system = PLATFORM_SUBTYPE if interaction in _PLATFORM_ONLY else RESTFUL
    agents: list[dict[str, Any]] = []
    if event.client_id:
        agent: dict[str, Any] = {
            "type": {"coding": [{"system": PARTICIPATION, "code": "IRCP"}]},
            "who": {"identifier": {"system": CLIENT_ID_SYSTEM, "value": event.client_id}},
            "requestor": True,
        }
        if event.partner:
            agent["altId"] = event.partner
        if event.source_address:
            agent["network"] = {"address": event.source_address, "type": "2"}
        if event.consent_basis:
            agent["policy"] = [event.consent_basis]
        agents.append(agent)
    if event.actor:
        agents.append({"who": {"display": event.actor}, "requestor": not event.client_id})
    if not agents:  # a caller no token vouched for
        agents.append({"who": {"display": "unauthenticated"}, "requestor": True})
        if event.source_address:
            agents[0]["network"] = {"address": event.source_address, "type": "2"}
    entities: list[dict[str, Any]] = [
        {
            "what": {"reference": f"Patient/{patient}"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"},
        }
        for patient in event.patients
    ]
    if event.resource_type:
        what = event.resource_type + (f"/{event.resource_id}" if event.resource_id else "")
        entities.append({"what": {"reference": what}, "type": {"code": event.resource_type}})
    if event.query:
        entities.append({"query": base64.b64encode(event.query.encode()).decode()})
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(event.pk),
        "meta": {"lastUpdated": event.recorded.isoformat()},
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
            "display": "RESTful Operation",
        },
        "subtype": [{"system": subtype_system, "code": interaction.value}],
        "action": _ACTION.get(interaction, "R"),
        "recorded": event.recorded.isoformat(),
        "outcome": _outcome_code(event.status),
        "outcomeDesc": f"{event.status} {event.outcome}".strip(),
        "agent": agents,
        "source": {"observer": {"display": "fhirplatform"}, "type": [{"code": "4"}]},
        "entity": entities,
    }
    if event.purpose:
        resource["purposeOfEvent"] = [{"coding": [{"system": ACT_REASON, "code": event.purpose}]}]
    return resource


def _criterion_q(criterion: Criterion) -> Q:
    """One search parameter of the AuditEvent search as a filter on the trail."""
    combined = Q()
    for value in criterion.values:
        match criterion.name:
            case "date":
                combined |= instant_value_q(criterion, value, "recorded")
            case "agent":
                combined |= Q(client_id=value.removeprefix(f"{CLIENT_ID_SYSTEM}|"))
            case "patient":
                combined |= Q(patients__contains=[value.removeprefix("Patient/")])
            case "entity":
                kind, _, ident = value.partition("/")
                if not ident:
                    raise bad_value(criterion, f"'{value}' is not a Type/id reference")
                combined |= Q(resource_type=kind, resource_id=ident)
                if kind == "Patient":
                    combined |= Q(patients__contains=[ident])
            case "action":
                if value not in ("C", "R", "U", "D", "E"):
                    raise bad_value(criterion, f"'{value}' is not C, R, U, D or E")
                combined |= Q(
                    interaction__in=[i for i in Interaction if _ACTION.get(i, "R") == value]
                )
            case "outcome":
                bounds = {"0": (0, 400), "4": (400, 500), "8": (500, 1000), "12": (500, 1000)}
                if value not in bounds:
                    raise bad_value(criterion, f"'{value}' is not 0, 4, 8 or 12")
                low, high = bounds[value]
                combined |= Q(status__gte=low, status__lt=high)
            case "subtype":
                combined |= Q(interaction=value.rpartition("|")[2])
    return combined


def audit_filter(params: list[tuple[str, str]]) -> tuple[Q, int]:
    """The trail filter of an AuditEvent search, and its page size (`_count`)."""
    query, count = Q(), None
    for name, raw in params:
        if name == "_count":
            count = count_parse(raw)
            continue
        if name in ("_cursor", "_format"):
            continue
        if not (text_storable(name) and text_storable(raw)):
            raise FhirError(
                400,
                IssueCode.VALUE,
                f"Search parameter '{name[:100]}': holds a NUL character (U+0000)",
                expression=[name[:100]],
            )
        code, _, modifier = name.partition(":")
        if code not in SEARCH_PARAMETERS or modifier:
            raise FhirError(
                400,
                IssueCode.NOT_SUPPORTED,
                f"AuditEvent search takes {', '.join(SEARCH_PARAMETERS)} and _count, not '{name}'",
                expression=[name],
            )
        query &= _criterion_q(Criterion(code, None, split_values(raw)))
    return query, count_parse(None) if count is None else count
