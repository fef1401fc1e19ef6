"""/fhir/<tenant>/AuditEvent: the caller's tenant's audit trail as FHIR AuditEvents
(audit/fhir.py), read-only, through the whole pipeline like any FHIR request. It needs
`system/AuditEvent.rs`; the read of the trail is itself an audited request. Consent does
not apply: the trail is the tenant's record of accesses, read by its auditors."""

from typing import Any

from django.db.models import Q
from rest_framework.request import Request
from rest_framework.response import Response

from audit.fhir import audit_event_resource, audit_filter
from audit.models import AuditEvent
from fhirplatform.errors import FhirError, IssueCode, not_found
from fhirplatform.fhir.http import query_pairs
from fhirplatform.fhir.paging import (
    CURSOR_PARAM,
    cursor_digest,
    cursor_invalid,
    cursor_make,
    cursor_read,
)
from fhirplatform.fhir.pipeline import Description, Endpoint
from fhirplatform.fhir.views import BaseFhirView
from fhirplatform.limits.codes import EndpointClass
from tenants.scopes import Interaction

AUDIT_EVENT = "AuditEvent"


def _read_only() -> FhirError:
    return FhirError(
        405,
        IssueCode.NOT_SUPPORTED,
        "AuditEvent is the platform's audit trail: it is read and searched, never written",
    )


class AuditEventSearchView(BaseFhirView):
    """[base]/AuditEvent — search the trail (GET)."""

    @classmethod
    def endpoint(cls, method: str, kwargs: dict[str, Any]) -> Endpoint:
        return Endpoint(Interaction.SEARCH, AUDIT_EVENT, EndpointClass.SEARCH)

    def describe(self, request: Request, **kwargs: Any) -> Description:
        return Description(*self.endpoint(request.method or "", kwargs), 1)

    def get(self, request: Request, tenant: str) -> Response:
        params = [(name, value) for name, value in query_pairs(request) if name != CURSOR_PARAM]
        query, count = audit_filter(params)
        digest = cursor_digest("audit", sorted(p for p in params if p[0] != "_count"))
        cursor = request.query_params.get(CURSOR_PARAM)
        if cursor:
            position = cursor_read(caller=self.caller, cursor=cursor, digest=digest)
            before = position.get("before")
            if not isinstance(before, int):
                raise cursor_invalid()
            query &= Q(id__lt=before)
        rows = list(AuditEvent.objects.filter(query).order_by("-id")[: count + 1])
        page, more = rows[:count], len(rows) > count
        base = f"{self.base_url}/{AUDIT_EVENT}"
        links = [{"relation": "self", "url": request.build_absolute_uri()}]
        if more and page:
            next_cursor = cursor_make(
                caller=self.caller, digest=digest, position={"before": page[-1].pk}
            )
            query_text = "&".join(f"{n}={v}" for n, v in params)
            links.append(
                {"relation": "next", "url": f"{base}?{query_text}&{CURSOR_PARAM}={next_cursor}"}
            )
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "link": links}
        if page:
            bundle["entry"] = [
                {
                    "fullUrl": f"{base}/{event.pk}",
                    "resource": audit_event_resource(event),
                    "search": {"mode": "match"},
                }
                for event in page
            ]
        if not cursor and not more:
            bundle["total"] = len(page)
        return Response(bundle)

    def post(self, request: Request, tenant: str) -> Response:
        raise _read_only()


class AuditEventReadView(BaseFhirView):
    """[base]/AuditEvent/<id> — read one event."""

    @classmethod
    def endpoint(cls, method: str, kwargs: dict[str, Any]) -> Endpoint:
        return Endpoint(Interaction.READ, AUDIT_EVENT, EndpointClass.READ)

    def describe(self, request: Request, **kwargs: Any) -> Description:
        return Description(*self.endpoint(request.method or "", kwargs), 1)

    def get(self, request: Request, tenant: str, logical_id: str) -> Response:
        event = (
            AuditEvent.objects.filter(pk=int(logical_id)).first() if logical_id.isdigit() else None
        )
        if event is None:
            raise not_found()
        return Response(audit_event_resource(event))

    def put(self, request: Request, tenant: str, logical_id: str) -> Response:
        raise _read_only()

    def patch(self, request: Request, tenant: str, logical_id: str) -> Response:
        raise _read_only()

    def delete(self, request: Request, tenant: str, logical_id: str) -> Response:
        raise _read_only()
