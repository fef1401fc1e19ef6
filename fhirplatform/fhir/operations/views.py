"""The operations' views. Each goes through the FHIR request pipeline like any other
endpoint (pipeline.py): describe() names the scope it needs and the limits that apply,
and the pipeline writes its audit event, naming the patients whose data it showed."""

from typing import Any, NoReturn
from urllib.parse import urlencode

from rest_framework.request import Request
from rest_framework.response import Response

from audit.models import Interaction as AuditInteraction
from fhirplatform.errors import FhirError, IssueCode
from fhirplatform.fhir import selectors
from fhirplatform.fhir.http import FhirJSONParser, JsonText, PlainJSONParser, query_pairs
from fhirplatform.fhir.numbers import exact_loads
from fhirplatform.fhir.operations.definitions import Level, operation_unsupported
from fhirplatform.fhir.operations.everything import (
    EverythingQuery,
    everything_page,
    everything_types,
)
from fhirplatform.fhir.operations.lastn import OBSERVATION, lastn_check, lastn_params, lastn_rows
from fhirplatform.fhir.operations.validate import (
    MODE_CREATE,
    MODE_UPDATE,
    mode_check,
    validation_input,
    validation_outcome,
)
from fhirplatform.fhir.paging import CURSOR_PARAM
from fhirplatform.fhir.pipeline import Description, Endpoint
from fhirplatform.fhir.search.parsing import IGNORED_CONTROL, Control, search_parse
from fhirplatform.fhir.search.searchset import searchset_entries
from fhirplatform.fhir.search.selectors import search_matches
from fhirplatform.fhir.search.semantic import SearchMemo
from fhirplatform.fhir.validation import resource_type_check
from fhirplatform.fhir.views import BaseFhirView, search_request_cost
from fhirplatform.limits.codes import EndpointClass
from tenants.scopes import Interaction

PATIENT = "Patient"
_EVERYTHING_PARAMS = frozenset({"_count", "_since", "_type", CURSOR_PARAM, *IGNORED_CONTROL})
_EVERYTHING_UNSUPPORTED = frozenset({"start", "end"})


def _searchset(
    *, self_url: str, entries: list[dict[str, Any]], next_url: str | None, total: int | None
) -> dict[str, Any]:
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        bundle["total"] = total
    bundle["link"] = [{"relation": "self", "url": self_url}]
    if next_url:
        bundle["link"].append({"relation": "next", "url": next_url})
    if entries:
        bundle["entry"] = entries
    return bundle


class ValidateView(BaseFhirView):
    """[base]/Type/$validate (POST: as a create) and [base]/Type/id/$validate (POST: the
    body as an update of that id; GET: the stored resource).

    Scopes: what the validation rehearses. A create needs `c`, an update `u`: the answer
    tells the caller no more than attempting that write would, and a client that may only
    write (an ingestion feed) can check before it writes. Validating the stored resource
    reads it, so it needs `r` and the consent decision a read needs."""

    parser_classes = [FhirJSONParser, PlainJSONParser]

    @classmethod
    def endpoint(cls, method: str, kwargs: dict[str, Any]) -> Endpoint:
        resource_type = kwargs["resource_type"]
        resource_type_check(resource_type)
        if "logical_id" not in kwargs:
            return Endpoint(Interaction.CREATE, resource_type, EndpointClass.WRITE)
        if method == "GET":
            return Endpoint(Interaction.READ, resource_type, EndpointClass.READ)
        return Endpoint(Interaction.UPDATE, resource_type, EndpointClass.WRITE)

    def describe(self, request: Request, **kwargs: Any) -> Description:
        endpoint = self.endpoint(request.method or "", kwargs)
        # Nothing is written: the event must not read as a create or an update. Its query
        # names $validate.
        self.state.audit.interaction = AuditInteraction.READ
        # No transaction: it writes nothing, and its one read (of a stored resource) is a
        # statement that names its schema.
        return Description(*endpoint, 1, atomic=False)

    def get(self, request: Request, tenant: str, resource_type: str, logical_id: str) -> Response:
        stored = selectors.resource_read(
            resource_type=resource_type, logical_id=logical_id, consent=self.consent
        )
        self.shown(resource_type, stored.compartment)
        outcome = validation_outcome(
            content=exact_loads(stored.content.text),
            resource_type=resource_type,
            logical_id=logical_id,
        )
        return Response(outcome)

    def post(
        self, request: Request, tenant: str, resource_type: str, logical_id: str | None = None
    ) -> Response:
        asked = validation_input(self.body(request), request.query_params.get("mode"))
        mode_check(asked.mode, allowed=(MODE_UPDATE,) if logical_id else (MODE_CREATE,))
        outcome = validation_outcome(
            content=asked.resource, resource_type=resource_type, logical_id=logical_id
        )
        return Response(outcome)


class EverythingView(BaseFhirView):
    """[base]/Patient/id/$everything — the patient's compartment, the Patient first.

    Scopes: read of the Patient (the pipeline's check); each other type appears only
    when the caller may search it, as `Type?patient=id` would show it."""

    @classmethod
    def endpoint(cls, method: str, kwargs: dict[str, Any]) -> Endpoint:
        return Endpoint(Interaction.READ, PATIENT, EndpointClass.SEARCH)

    def describe(self, request: Request, **kwargs: Any) -> Description:
        self.state.audit.interaction = AuditInteraction.SEARCH
        cost = search_request_cost(request.query_params.get("_count"))
        return Description(*self.endpoint(request.method or "", kwargs), cost)

    def get(self, request: Request, tenant: str, logical_id: str) -> Response:
        for name in request.query_params:
            if name in _EVERYTHING_UNSUPPORTED or name not in _EVERYTHING_PARAMS:
                raise FhirError(
                    400,
                    IssueCode.NOT_SUPPORTED,
                    f"$everything does not support the parameter '{name[:64]}' "
                    "(supported: _count, _since, _type)",
                    expression=[name[:64]],
                )
        kept = {
            name: request.query_params[name]
            for name in ("_since", "_type")
            if name in request.query_params
        }
        checked = selectors.history_parse(
            params={
                "_since": kept.get("_since", ""),
                "_count": request.query_params.get("_count", ""),
            }
        )
        query = EverythingQuery(
            patient_id=logical_id,
            resource_types=everything_types(caller=self.caller, requested=kept.get("_type")),
            since=checked.since,
            count=checked.count,
        )
        cursor = request.query_params.get(CURSOR_PARAM)
        page = everything_page(caller=self.caller, query=query, cursor=cursor, consent=self.consent)
        path = f"{self.base_url}/{PATIENT}/{logical_id}/$everything"
        paged = kept | {"_count": str(query.count)}
        self_query = paged | ({CURSOR_PARAM: cursor} if cursor else {})
        next_url = None
        if page.next_cursor:
            next_url = f"{path}?{urlencode(paged | {CURSOR_PARAM: page.next_cursor})}"
        entries = []
        for row in page.rows:
            self.state.audit.saw(row.compartment)
            entries.append(
                {
                    "fullUrl": f"{self.base_url}/{row.resource_type}/{row.logical_id}",
                    "resource": JsonText(row.content_text),  # type: ignore[attr-defined]
                    "search": {"mode": "match"},
                }
            )
        whole = cursor is None and page.next_cursor is None
        bundle = _searchset(
            self_url=f"{path}?{urlencode(self_query)}",
            entries=entries,
            next_url=next_url,
            total=len(entries) if whole else None,
        )
        return Response(bundle)


class LastnView(BaseFhirView):
    """[base]/Observation/$lastn — the most recent `max` Observations of each code, per
    patient. Scopes: search of Observation (and of every type a chain reaches), as the
    same criteria searched would need."""

    @classmethod
    def endpoint(cls, method: str, kwargs: dict[str, Any]) -> Endpoint:
        return Endpoint(Interaction.SEARCH, OBSERVATION, EndpointClass.SEARCH)

    def describe(self, request: Request, **kwargs: Any) -> Description:
        return Description(*self.endpoint(request.method or "", kwargs), search_request_cost(None))

    def get(self, request: Request, tenant: str) -> Response:
        maximum, params = lastn_params(query_pairs(request))
        # Strict: its parameters are the algorithm's inputs, and one ignored would widen
        # the answer unnoticed.
        search = search_parse(resource_type=OBSERVATION, params=params, strict=True)
        lastn_check(search)
        matches = search_matches(
            caller=self.caller, request=search, base_url=self.base_url, consent=self.consent
        )
        rows = lastn_rows(matches=matches, maximum=maximum)
        entries = searchset_entries(
            caller=self.caller,
            request=search,
            rows=rows,
            base=self.base_url,
            as_stored=True,
            consent=self.consent,
            memo=SearchMemo(cache=None, request=search),
            seen=self.state.audit.saw,
        )
        used = [(name, value) for name, value in search.used if name != Control.COUNT]
        self_url = f"{self.base_url}/{OBSERVATION}/$lastn?" + urlencode(
            [*used, ("max", str(maximum))]
        )
        return Response(
            _searchset(self_url=self_url, entries=entries, next_url=None, total=len(rows))
        )


class UnknownOperationView(BaseFhirView):
    """`$name` at the system, type or instance level where this server offers no such
    operation: a 400 `not-supported` naming it, after the token is checked (so an
    anonymous caller learns nothing of what is offered beyond the CapabilityStatement)."""

    @classmethod
    def endpoint(cls, method: str, kwargs: dict[str, Any]) -> NoReturn:
        resource_type = kwargs.get("resource_type")
        if resource_type is None:
            raise operation_unsupported(kwargs["operation"], Level.SYSTEM)
        resource_type_check(resource_type)
        level = Level.INSTANCE if "logical_id" in kwargs else Level.TYPE
        raise operation_unsupported(kwargs["operation"], level, resource_type)

    def describe(self, request: Request, **kwargs: Any) -> NoReturn:
        self.endpoint(request.method or "", kwargs)
