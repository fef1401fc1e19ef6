"""FHIR REST views. Each one declares what it is (describe) and then only parses the
request, calls a service or selector, and renders the result with its HTTP metadata."""

from typing import Any
from urllib.parse import urlencode

from django.http import QueryDict
from django.utils.http import parse_http_date_safe
from rest_framework.parsers import FormParser
from rest_framework.request import Request
from rest_framework.response import Response

from audit.models import Interaction as AuditInteraction
from fhirplatform.errors import FHIR_JSON, FhirError, Issue, IssueCode, Severity, operation_outcome
from fhirplatform.fhir import bundle_processing, bundles, selectors, services
from fhirplatform.fhir.caching import SearchCache, depends_on_resource
from fhirplatform.fhir.capability import capability_statement
from fhirplatform.fhir.http import FhirJSONParser, PlainJSONParser, query_pairs
from fhirplatform.fhir.models import Resource
from fhirplatform.fhir.paging import count_parse
from fhirplatform.fhir.pipeline import Description, Endpoint, FhirView, PublicFhirView
from fhirplatform.fhir.representation import (
    etag,
    etag_version,
    history_bundle,
    version_headers,
    version_url,
)
from fhirplatform.fhir.search.selectors import search_bundle
from fhirplatform.fhir.validation import payload_check, resource_type_check
from fhirplatform.limits.codes import EndpointClass
from fhirplatform.limits.costs import bundle_cost, search_cost
from tenants.scopes import Interaction
from tenants.selectors import tenant_fhir_base, token_endpoint_url

_WRITE_INTERACTIONS = {
    "PUT": Interaction.UPDATE,
    "PATCH": Interaction.PATCH,
    "DELETE": Interaction.DELETE,
}


class JsonPatchParser(FhirJSONParser):
    media_type = "application/json-patch+json"


def json_patch_require(request: Request) -> None:
    if request.content_type.split(";")[0].strip() != JsonPatchParser.media_type:
        raise FhirError(
            415,
            IssueCode.NOT_SUPPORTED,
            f"PATCH takes {JsonPatchParser.media_type} (JSON Patch)",
        )


def prefer_parse(request: Request) -> dict[str, str]:
    """Prefer: return=minimal, handling=strict ... as a dict."""
    prefer: dict[str, str] = {}
    for part in request.headers.get("Prefer", "").replace(";", ",").split(","):
        name, _, value = part.strip().partition("=")
        if name:
            prefer[name.lower()] = value.strip().strip('"').lower()
    return prefer


def search_request_cost(count: str | None) -> int:
    """What a search is priced at, by the `_count` of its URL (the refusal gate prices it
    the same way)."""
    return search_cost(count=count_parse(count))


def _search_cost(request: Request) -> int:
    return search_request_cost(request.query_params.get("_count"))


class BaseFhirView(FhirView):
    @property
    def base_url(self) -> str:
        return tenant_fhir_base(self.caller.tenant)

    def source(self) -> str:
        # meta.source names the writing client and the request, so a version traces back.
        request_id = getattr(self.request._request, "request_id", "")
        return f"urn:fhirplatform:client:{self.caller.client.client_id}#{request_id}"

    def body(self, request: Request) -> Any:
        payload_check(request.META)
        data = request.data
        if not data and not request.META.get("CONTENT_LENGTH"):
            raise FhirError(400, IssueCode.STRUCTURE, "The request needs a body")
        return data

    def shown(self, resource_type: str, patients: list[str]) -> None:
        """A resource the answer shows: the cache entry stands on its patients, and the
        audit event names them."""
        depends_on_resource(state=self.state.cache, resource_type=resource_type, patients=patients)
        self.state.audit.saw(patients)

    def put_answer(self, request: Request, result: services.WriteResult) -> Response:
        """An update's answer: 201 with Location when it created the resource."""
        if result.created:
            return self.written(request, result.resource, 201, location=True)
        return self.written(request, result.resource, 200)

    def written(
        self, request: Request, resource: Resource, status: int, location: bool = False
    ) -> Response:
        self.state.audit.saw(resource.compartment)
        self.state.audit.resource_id = resource.logical_id
        headers = version_headers(resource)
        if location:
            headers["Location"] = version_url(self.base_url, resource)
        returning = prefer_parse(request).get("return", "representation")
        if returning == "minimal":
            return Response(None, status=status, headers=headers)
        if returning == "operationoutcome":
            outcome = operation_outcome(
                Issue(
                    code=IssueCode.INFORMATIONAL,
                    severity=Severity.INFORMATION,
                    diagnostics=f"{resource.resource_type}/{resource.logical_id} is at version "
                    f"{resource.version_id}",
                )
            )
            return Response(outcome, status=status, headers=headers)
        return Response(resource.content, status=status, headers=headers)

    def search(
        self, request: Request, resource_type: str | None, params: list[tuple[str, str]]
    ) -> Response:
        strict = prefer_parse(request).get("handling") == "strict"
        bundle = search_bundle(
            caller=self.caller,
            resource_type=resource_type,
            params=params,
            base_url=self.base_url,
            strict=strict,
            consent=self.consent,
            as_stored=True,
            cache=SearchCache(caller=self.caller, state=self.state.cache),
            seen=self.state.audit.saw,
        )
        return Response(bundle, content_type=FHIR_JSON)


class TypeView(BaseFhirView):
    """[base]/Type — search (GET), create (POST, optionally If-None-Exist), and the
    conditional update (PUT), patch (PATCH) and delete (DELETE) of `?criteria`."""

    parser_classes = [FhirJSONParser, PlainJSONParser, JsonPatchParser]

    @classmethod
    def endpoint(cls, method: str, kwargs: dict[str, Any]) -> Endpoint:
        resource_type_check(kwargs["resource_type"])
        if method == "POST":
            return Endpoint(Interaction.CREATE, kwargs["resource_type"], EndpointClass.WRITE)
        if method in _WRITE_INTERACTIONS:
            interaction = _WRITE_INTERACTIONS[method]
            return Endpoint(interaction, kwargs["resource_type"], EndpointClass.WRITE)
        return Endpoint(Interaction.SEARCH, kwargs["resource_type"], EndpointClass.SEARCH)

    def describe(self, request: Request, **kwargs: Any) -> Description:
        endpoint = self.endpoint(request.method or "", kwargs)
        if endpoint.interaction != Interaction.SEARCH:
            return Description(*endpoint, 1)
        return Description(*endpoint, _search_cost(request))

    def criteria(self, request: Request) -> str:
        """The conditional criteria: the URL's query, as the client wrote it."""
        return str(request.META.get("QUERY_STRING", ""))

    def visible_matches(self) -> services.VisibleMatchFunction:
        return lambda resource_type, criteria, most: selectors.resource_match(
            caller=self.caller,
            resource_type=resource_type,
            criteria=criteria,
            consent=self.consent,
            most=most,
        )

    def put(self, request: Request, tenant: str, resource_type: str) -> Response:
        result = services.resource_update_conditional(
            resource_type=resource_type,
            query=self.criteria(request),
            content=self.body(request),
            source=self.source(),
            matches=self.visible_matches(),
            update_creates=self.caller.tenant.fhir_update_creates,
            if_match=etag_version(request.headers.get("If-Match")),
        )
        return self.put_answer(request, result)

    def patch(self, request: Request, tenant: str, resource_type: str) -> Response:
        json_patch_require(request)
        resource = services.resource_patch_conditional(
            resource_type=resource_type,
            query=self.criteria(request),
            patch=self.body(request),
            source=self.source(),
            matches=self.visible_matches(),
            if_match=etag_version(request.headers.get("If-Match")),
        )
        return self.written(request, resource, 200)

    def delete(self, request: Request, tenant: str, resource_type: str) -> Response:
        deleted = services.resource_delete_conditional(
            resource_type=resource_type,
            query=self.criteria(request),
            matches=self.visible_matches(),
            if_match=etag_version(request.headers.get("If-Match")),
        )
        for resource in deleted:
            self.state.audit.saw(resource.compartment)
        if len(deleted) != 1:
            return Response(None, status=204)
        self.state.audit.resource_id = deleted[0].logical_id
        return Response(None, status=204, headers={"ETag": etag(deleted[0].version_id)})

    def get(self, request: Request, tenant: str, resource_type: str) -> Response:
        return self.search(request, resource_type, query_pairs(request))

    def post(self, request: Request, tenant: str, resource_type: str) -> Response:
        content = self.body(request)
        if_none_exist = request.headers.get("If-None-Exist")
        if if_none_exist:
            result = services.resource_create_conditional(
                resource_type=resource_type,
                content=content,
                source=self.source(),
                query=if_none_exist,
                matches=lambda t, criteria: selectors.resource_match(
                    caller=self.caller, resource_type=t, criteria=criteria
                ),
            )
            if result.created:
                return self.written(request, result.resource, 201, location=True)
            if selectors.match_disclosable(
                caller=self.caller, match=result.resource, consent=self.consent
            ):
                return self.written(request, result.resource, 200)
            # Matched, nothing created; no body, ETag or Last-Modified name the match.
            return Response(None, status=200)
        resource = services.resource_create(
            resource_type=resource_type, content=content, source=self.source()
        )
        return self.written(request, resource, 201, location=True)


class TypeSearchView(BaseFhirView):
    """[base]/Type/_search — search with form-encoded parameters (POST)."""

    parser_classes = [FormParser]

    @classmethod
    def endpoint(cls, method: str, kwargs: dict[str, Any]) -> Endpoint:
        resource_type_check(kwargs["resource_type"])
        return Endpoint(Interaction.SEARCH, kwargs["resource_type"], EndpointClass.SEARCH)

    def describe(self, request: Request, **kwargs: Any) -> Description:
        return Description(*self.endpoint(request.method or "", kwargs), _search_cost(request))

    def post(self, request: Request, tenant: str, resource_type: str) -> Response:
        payload_check(request.META)
        data = request.data
        if not isinstance(data, QueryDict):
            raise FhirError(
                415,
                IssueCode.NOT_SUPPORTED,
                "_search takes application/x-www-form-urlencoded parameters",
            )
        form = [(name, value) for name, values in data.lists() for value in values]
        return self.search(request, resource_type, query_pairs(request) + form)


class InstanceView(BaseFhirView):
    """[base]/Type/id — read, update, patch, delete."""

    parser_classes = [FhirJSONParser, PlainJSONParser, JsonPatchParser]

    @classmethod
    def endpoint(cls, method: str, kwargs: dict[str, Any]) -> Endpoint:
        resource_type_check(kwargs["resource_type"])
        interaction = _WRITE_INTERACTIONS.get(method, Interaction.READ)
        if interaction == Interaction.READ:
            return Endpoint(interaction, kwargs["resource_type"], EndpointClass.READ)
        return Endpoint(interaction, kwargs["resource_type"], EndpointClass.WRITE)

    def describe(self, request: Request, **kwargs: Any) -> Description:
        endpoint = self.endpoint(request.method or "", kwargs)
        # A read is one statement that names its schema: no transaction around it.
        return Description(*endpoint, 1, atomic=endpoint.interaction != Interaction.READ)

    def get(self, request: Request, tenant: str, resource_type: str, logical_id: str) -> Response:
        resource = selectors.resource_read(
            resource_type=resource_type, logical_id=logical_id, consent=self.consent
        )
        self.shown(resource_type, resource.compartment)
        headers = version_headers(resource)
        if_none_match = request.headers.get("If-None-Match")
        if if_none_match and etag_version(if_none_match) == resource.version_id:
            return Response(None, status=304, headers=headers)
        # HTTP dates have whole seconds, so compare lastUpdated truncated to the second;
        # If-None-Match, when sent, takes precedence (RFC 9110 13.2.2).
        since = parse_http_date_safe(request.headers.get("If-Modified-Since", ""))
        if (
            not if_none_match
            and since is not None
            and int(resource.last_updated.timestamp()) <= since
        ):
            return Response(None, status=304, headers=headers)
        return Response(resource.content, headers=headers)

    def put(self, request: Request, tenant: str, resource_type: str, logical_id: str) -> Response:
        result = services.resource_put(
            resource_type=resource_type,
            logical_id=logical_id,
            content=self.body(request),
            source=self.source(),
            update_creates=self.caller.tenant.fhir_update_creates,
            if_match=etag_version(request.headers.get("If-Match")),
        )
        return self.put_answer(request, result)

    def patch(self, request: Request, tenant: str, resource_type: str, logical_id: str) -> Response:
        json_patch_require(request)
        # A PATCH answers with the whole patched resource, most of which the caller did not
        # send: it may patch only what its consent decision lets it read.
        selectors.resource_read(
            resource_type=resource_type, logical_id=logical_id, consent=self.consent
        )
        resource = services.resource_patch(
            resource_type=resource_type,
            logical_id=logical_id,
            patch=self.body(request),
            source=self.source(),
            if_match=etag_version(request.headers.get("If-Match")),
        )
        return self.written(request, resource, 200)

    def delete(
        self, request: Request, tenant: str, resource_type: str, logical_id: str
    ) -> Response:
        resource = services.resource_delete(
            resource_type=resource_type,
            logical_id=logical_id,
            if_match=etag_version(request.headers.get("If-Match")),
        )
        self.state.audit.saw(resource.compartment)
        return Response(None, status=204, headers={"ETag": etag(resource.version_id)})


class VersionView(BaseFhirView):
    """[base]/Type/id/_history/vid — vread."""

    @classmethod
    def endpoint(cls, method: str, kwargs: dict[str, Any]) -> Endpoint:
        resource_type_check(kwargs["resource_type"])
        return Endpoint(Interaction.VREAD, kwargs["resource_type"], EndpointClass.READ)

    def describe(self, request: Request, **kwargs: Any) -> Description:
        # One statement that names its schema: no transaction around it.
        return Description(*self.endpoint(request.method or "", kwargs), 1, atomic=False)

    def get(
        self, request: Request, tenant: str, resource_type: str, logical_id: str, version_id: str
    ) -> Response:
        version = selectors.resource_vread(
            resource_type=resource_type,
            logical_id=logical_id,
            version_id=version_id,
            consent=self.consent,
        )
        self.shown(resource_type, version.compartment)
        return Response(version.content, headers=version_headers(version))


class HistoryView(BaseFhirView):
    """_history at instance, type and system level, paged by signed keyset cursors."""

    @classmethod
    def endpoint(cls, method: str, kwargs: dict[str, Any]) -> Endpoint:
        resource_type = kwargs.get("resource_type")
        if resource_type is None:
            # System history spans every type; the scope check needs system/*.s.
            return Endpoint(Interaction.HISTORY_SYSTEM, "*", EndpointClass.HISTORY)
        resource_type_check(resource_type)
        interaction = (
            Interaction.HISTORY_INSTANCE if "logical_id" in kwargs else Interaction.HISTORY_TYPE
        )
        return Endpoint(interaction, resource_type, EndpointClass.HISTORY)

    def describe(self, request: Request, **kwargs: Any) -> Description:
        return Description(*self.endpoint(request.method or "", kwargs), 1)

    def get(
        self,
        request: Request,
        tenant: str,
        resource_type: str | None = None,
        logical_id: str | None = None,
    ) -> Response:
        params = {name: request.query_params.get(name, "") for name in ("_since", "_count")}
        query = selectors.history_parse(
            params=params, resource_type=resource_type, logical_id=logical_id
        )
        cursor = request.query_params.get("_cursor")
        page = selectors.history_page(
            caller=self.caller, query=query, cursor=cursor, consent=self.consent
        )
        path = "/".join(p for p in (resource_type, logical_id, "_history") if p)
        kept = {name: value for name, value in params.items() if value}
        self_query = kept | ({"_cursor": cursor} if cursor else {})
        self_url = f"{self.base_url}/{path}" + (f"?{urlencode(self_query)}" if self_query else "")

        def page_url(page_cursor: str) -> str:
            query_part = kept | {"_count": str(query.count), "_cursor": page_cursor}
            return f"{self.base_url}/{path}?{urlencode(query_part)}"

        for version in page.versions:
            self.state.audit.saw(version.compartment)
        bundle = history_bundle(
            versions=page.versions,
            base_url=self.base_url,
            self_url=self_url,
            next_url=page_url(page.next_cursor) if page.next_cursor else None,
            previous_url=page_url(page.previous_cursor) if page.previous_cursor else None,
            total=page.total,
        )
        return Response(bundle)


class SystemView(BaseFhirView):
    """[base] — batch/transaction Bundles (POST) and whole-system search (GET)."""

    planned: bundles.BundlePlan

    @classmethod
    def endpoint(cls, method: str, kwargs: dict[str, Any]) -> Endpoint | None:
        if method != "POST":
            return Endpoint(Interaction.SEARCH, "*", EndpointClass.SEARCH)
        return None  # a Bundle is what its entries are

    def describe(self, request: Request, **kwargs: Any) -> Description:
        if (endpoint := self.endpoint(request.method or "", kwargs)) is not None:
            return Description(*endpoint, _search_cost(request))
        payload_check(request.META)
        # Planned once: the plan prices the request here and is what post() runs.
        self.planned = bundles.bundle_plan(bundle=request.data, base_url=self.base_url)
        self.state.audit.interaction = AuditInteraction(self.planned.kind)
        self.state.audit.resource_type = "Bundle"
        # The pipeline checks the first entry's scope; every entry is checked as it runs.
        first = self.planned.entries[0] if self.planned.entries else None
        interaction = first.interaction if first else Interaction.SEARCH
        resource_type = first.resource_type if first else "Bundle"
        cost = bundle_cost(methods=self.planned.methods)
        return Description(interaction, resource_type, EndpointClass.BATCH, cost)

    def get(self, request: Request, tenant: str) -> Response:
        return self.search(request, None, query_pairs(request))

    def post(self, request: Request, tenant: str) -> Response:
        representation = prefer_parse(request).get("return") == "representation"
        bundle = bundle_processing.bundle_process(
            caller=self.caller,
            planned=self.planned,
            base_url=self.base_url,
            source=self.source(),
            consent=self.consent,
            seen=self.state.audit.saw,
            representation=representation,
        )
        return Response(bundle)


class MetadataView(PublicFhirView):
    """[base]/metadata — the CapabilityStatement, no authentication."""

    def get(self, request: Request, tenant: str) -> Response:
        return Response(
            capability_statement(
                base_url=tenant_fhir_base(self.tenant),
                token_endpoint=token_endpoint_url(self.tenant.slug),
                update_creates=self.tenant.fhir_update_creates,
            )
        )
