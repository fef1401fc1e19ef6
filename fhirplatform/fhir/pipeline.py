"""The FHIR request pipeline. Every authenticated FHIR view runs its steps in the order
DESIGN.md fixes, and every answer leaves through one exit:

    [refusal gate]      a flood this process already knows Redis would refuse is answered
                        429 before Django runs (fhirplatform/fhir/gate.py, around the WSGI
                        application): the same answer, with a request id of its own
    request id          RequestContextMiddleware (fhirplatform/middleware.py), before any view
    tenant from URL     the view's `tenant` URL argument ...
    token               ... bound to it by token_check (another tenant's: the shared 404), from
                        the token cache when it holds it (tenants/token_cache.py)
    scope               scope_require, for what the view's describe() says the request is
    rate limit          limit_admit: every bucket that applies, in one Redis round trip ...
    concurrency slot    ... and the in-flight slot, held in the admission; the same round
                        trip reads the caller generation: a token cached under another one
                        is read again from the database (and its scope checked again)
    cache lookup        a read or search is looked up in the response cache (one Redis
                        round trip, fhirplatform/fhir/caching.py): a hit is the answer and
                        skips the tenant part; hit or miss, it brings the tenant's
                        generation tokens the consent decision stands on
    tenant part         one transaction in the caller's tenant schema (tenant_schema),
                        re-run whole after a deadlock (transaction_run); a read, one
                        statement naming its schema, runs without one (Description.atomic):
      consent decision    the handler's selectors ask the caller's consent guard
                          (consent/enforcement.py) of every resource they would show: a
                          read is decided on its row, a search leaves denied rows out in
                          SQL. It needs the resource, so it runs with the handler; a cache
                          hit was filled only after a permit under generations that still hold
      handler             the view's get/post/put/patch/delete
      audit event         written in the tenant part's transaction when it answered, so a
                          write and its event commit together (fhirplatform/fhir/auditing.py)
    exit                pipeline_finish: cache fill → audit event (unless written above;
                        refusals and reads) → idempotency completion → headers → admission
                        release

An Idempotency-Key is claimed once the request is admitted (a throttled retry claims
nothing). Answers, refusals and crashes alike leave through the exit with their headers;
the tenant part has committed (or rolled back) by then. A database outage, or a conflict
still lost after the re-runs, is a 503 (fhirplatform/db/faults.py), never a 500.
"""

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from django.core.handlers.exception import response_for_exception
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from rest_framework.exceptions import APIException
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from audit.models import Interaction as AuditInteraction
from fhirplatform.context import context_update
from fhirplatform.db.faults import database_fault
from fhirplatform.db.transactions import transaction_run
from fhirplatform.errors import FhirError, fhir_error_json
from fhirplatform.fhir.auditing import AuditState, audit_event_write
from fhirplatform.fhir.caching import CacheState, cache_begin, cache_finish, cached_response
from fhirplatform.fhir.caching import consent_guard as consent_guard_for
from fhirplatform.fhir.http import fhir_error_response
from fhirplatform.fhir.idempotency import IdempotencyClaim, IdempotentReplay, idempotency_begin
from fhirplatform.limits.codes import EndpointClass
from fhirplatform.limits.costs import request_cost
from fhirplatform.limits.engine import Admission, limit_admit
from fhirplatform.limits.refusals import refusal_charge
from fhirplatform.schemas import tenant_schema
from tenants.scopes import Interaction, scope_require
from tenants.selectors import tenant_for_url
from tenants.token_cache import token_cache
from tenants.tokens import Caller, TenantMismatch, TokenCheck, token_check

if TYPE_CHECKING:
    from consent.enforcement import ConsentGuard


class Endpoint(NamedTuple):
    """What a request is from its method and URL alone: the scope it needs (an interaction
    on a resource type) and the rate limits that apply to it (its endpoint class)."""

    interaction: Interaction
    resource_type: str
    endpoint_class: EndpointClass


class Description(NamedTuple):
    """What a request is, as its view's describe() states it: the scope it needs and the
    limits that apply to it."""

    interaction: Interaction
    resource_type: str
    endpoint_class: EndpointClass
    cost: int
    # False: the handler runs one statement that names its schema (a read), so it needs no
    # transaction: no BEGIN, search_path or COMMIT around it.
    atomic: bool = True


@dataclass
class PipelineState:
    """What one request has gathered on its way through the pipeline; the exit settles it."""

    caller: Caller | None = None
    description: Description | None = None
    admission: Admission | None = None
    idempotency: IdempotencyClaim | None = None
    # A request refused before admission is charged to its address's refusal budget,
    # whose headers it then carries instead of the caller's own.
    refusal_headers: dict[str, str] = field(default_factory=dict)
    # A stored outcome replayed for an Idempotency-Key: whatever its status, serving it
    # cost the platform nothing, so it must not count as a server error or a slow answer.
    replayed: bool = False
    # The response cache's lookup and fill, and the consent guard (caching.py).
    cache: CacheState = field(default_factory=lambda: CacheState(key=None))
    # The audit event's part (auditing.py), and what the URL named, for it.
    audit: AuditState = field(default_factory=AuditState)
    request: HttpRequest | None = None
    url: dict[str, Any] = field(default_factory=dict)


class FhirView(APIView):
    """Base of every authenticated FHIR endpoint.

    Subclasses implement `describe(request, **kwargs)`, returning the request's Description,
    and `endpoint(method, kwargs)` for what the method and URL alone say of it.
    """

    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []
    throttle_classes: list[Any] = []

    state: PipelineState

    @classmethod
    def endpoint(cls, method: str, kwargs: dict[str, Any]) -> Endpoint | None:
        """The request's Endpoint from its method and URL arguments, or None when that
        takes its body; FhirError for an unknown resource type. describe() builds on it,
        and the refusal gate (gate.py) uses it to answer a flood before this view runs."""
        return None

    def describe(self, request: Request, **kwargs: Any) -> Description:
        raise NotImplementedError

    @property
    def caller(self) -> Caller:
        """The caller the token step resolved; describe() and the handlers run after it."""
        if self.state.caller is None:
            raise RuntimeError("no caller before the token step")
        return self.state.caller

    @property
    def consent(self) -> "ConsentGuard":
        """The caller's consent guard, for the handlers' selectors (in the tenant part)."""
        return consent_guard_for(caller=self.caller, state=self.state.cache)

    def setup(self, request: HttpRequest, *args: Any, **kwargs: Any) -> None:
        super().setup(request, *args, **kwargs)
        self.state = PipelineState(request=request, url=dict(kwargs))

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        # The request id is already set (middleware); the tenant is the URL's.
        slug = kwargs["tenant"]
        check, mismatch = self._authenticate(request, url_tenant_slug=slug)
        description = self.state.description = self.describe(request, **kwargs)
        self._require_scope(request, check.caller, description)
        admission = self.state.admission = limit_admit(
            caller=check.caller,
            endpoint_class=description.endpoint_class,
            resource_type=description.resource_type,
            cost=request_cost(endpoint_class=description.endpoint_class, declared=description.cost),
        )
        token_cache.observe(admission.generation)
        if not check.current(admission.generation):
            # The token came from the cache under another caller generation (or the limiter
            # could not tell): read it again before anything touches tenant data.
            check, mismatch = self._reauthenticate(request, admission, url_tenant_slug=slug)
            self._require_scope(request, check.caller, description)
        if mismatch is not None:
            raise mismatch
        self.state.idempotency = idempotency_begin(request=request, caller=check.caller)

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        """DRF's dispatch, with the handler run as the request's tenant part."""
        self.args, self.kwargs = args, kwargs
        drf_request = self.initialize_request(request, *args, **kwargs)
        self.request = drf_request
        self.headers = self.default_response_headers
        try:
            self.initial(drf_request, *args, **kwargs)
            assert self.state.description is not None
            self.state.cache = cache_begin(
                caller=self.caller,
                interaction=self.state.description.interaction,
                request=drf_request,
            )
            hit = cached_response(
                state=self.state.cache, request=drf_request, audit=self.state.audit
            )
            response = hit or self._tenant_part(drf_request, *args, **kwargs)
        except Exception as exc:
            response = self.handle_exception(exc)
        self.response = self.finalize_response(drf_request, response, *args, **kwargs)
        return self.response

    def _tenant_part(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Everything that reads or writes the tenant's data, as one transaction in its
        schema: what a write changed is committed before the exit stores its answer for
        replays, and a deadlock victim is re-run whole.

        A re-run describes the request anew: describe() is repeatable, and what the
        first attempt consumed of it (a Bundle's plan, rewritten as it ran) is fresh.
        """
        method = (request.method or "").lower()
        handler = (
            getattr(self, method, self.http_method_not_allowed)
            if method in self.http_method_names
            else self.http_method_not_allowed
        )
        description = self.state.description
        if description is not None and not description.atomic:
            with tenant_schema(self.caller.tenant, atomic=False):
                response: Response = handler(request, *args, **kwargs)
                return response
        runs = 0

        def run() -> Response:
            nonlocal runs
            runs += 1
            if runs > 1:
                self.describe(request, **kwargs)
            self.state.audit.attempt()
            with tenant_schema(self.caller.tenant, atomic=False):  # in transaction_run's
                response: Response = handler(request, *args, **kwargs)
                # In the transaction: the write and its event commit together, or neither.
                audit_write_for(self.state, response)
                return response

        try:
            return transaction_run(work=run)
        except BaseException:
            self.state.audit.written = False  # rolled back with the transaction
            raise

    def _authenticate(
        self, request: Request, *, url_tenant_slug: str, fresh: bool = False
    ) -> tuple[TokenCheck, TenantMismatch | None]:
        """The token step: the checked token, and for another tenant's URL the 404 to answer.

        That 404 is answered only after the scope and rate-limit steps, charged to the
        caller's own quota, so it carries the same headers a missing resource's 404 does:
        nothing tells the two apart.
        """
        try:
            check = token_check(
                authorization=request.headers.get("Authorization"),
                url_tenant_slug=url_tenant_slug,
                fresh=fresh,
            )
        except TenantMismatch as mismatch:
            self.state.caller = mismatch.caller
            return mismatch.check, mismatch
        except FhirError:
            self._charge_refusal(request)
            raise
        self.state.caller = check.caller
        context_update(tenant=check.caller.tenant.slug, client=check.caller.client.client_id)
        return check, None

    def _reauthenticate(
        self, request: Request, admission: Admission, *, url_tenant_slug: str
    ) -> tuple[TokenCheck, TenantMismatch | None]:
        """The token step again, from the database. A token refused now gives its admission
        back at once and answers like any refused token, with the refusal budget's headers."""
        try:
            return self._authenticate(request, url_tenant_slug=url_tenant_slug, fresh=True)
        except FhirError as refusal:
            self.state.admission = None
            admission.release(status=refusal.status)
            raise

    def require_scope(self, caller: Caller, description: Description) -> None:
        """The scope step: the interaction on the described type. A view whose scope needs
        are not one type's (a bulk export's) states its own."""
        scope_require(
            scopes=caller.scopes,
            resource_type=description.resource_type,
            interaction=description.interaction,
        )

    def _require_scope(self, request: Request, caller: Caller, description: Description) -> None:
        try:
            self.require_scope(caller, description)
        except FhirError:
            self._charge_refusal(request)
            raise

    def _charge_refusal(self, request: Request) -> None:
        # Never the tenant's quota: a refused caller is not trusted with it. Past the
        # address's budget this raises the 429 that replaces the refusal.
        self.state.refusal_headers = refusal_charge(request=request)

    def handle_exception(self, exc: Exception) -> Response:
        """Every failure becomes a response, so that it too leaves through finalize_response."""
        if isinstance(exc, IdempotentReplay):
            self.state.replayed = True
            return exc.response()  # type: ignore[return-value]
        if isinstance(exc, FhirError):
            return fhir_error_response(exc)
        if isinstance(exc, APIException):
            return super().handle_exception(exc)  # rendered as an OperationOutcome
        if (fault := database_fault(exc)) is not None:
            return fhir_error_response(fault)
        # Unhandled (or Django's Http404 / PermissionDenied): answered here exactly as
        # Django would answer it (logged, got_request_exception sent, handler500), so the
        # slot, the idempotency key and the headers are still settled by the exit.
        return response_for_exception(self.request._request, exc)  # type: ignore[return-value]

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        response = super().finalize_response(request, response, *args, **kwargs)
        return pipeline_finish(state=self.state, response=response)


def audit_write_for(state: PipelineState, response: HttpResponseBase) -> None:
    """The request's audit event, once (auditing.py); raises the 503 when it cannot be."""
    description, url = state.description, state.url
    described_type = description.resource_type if description else ""
    audit_event_write(
        audit=state.audit,
        caller=state.caller,
        interaction=description.interaction if description else None,
        resource_type=url.get("resource_type") or described_type,
        resource_id=str(url.get("logical_id", "")),
        guard=state.cache.guard,
        request=state.request,  # type: ignore[arg-type]
        response=response,
    )


def pipeline_finish(*, state: PipelineState, response: HttpResponseBase) -> HttpResponseBase:
    """The one exit of the pipeline, for answers, refusals and crashes alike, in this order:

    1. cache fill — the response cache stores a fresh 200 of a read or search, before
       anything below touches the response, and X-Cache/Age say what it did; the
       request's consent denials are counted;
    2. audit event — unless the tenant part's transaction holds it already: for reads,
       refusals and failures (DESIGN: every step that denies still writes one), committed
       before the response leaves; when it cannot be written, the answer is a 503;
    3. idempotency completion — the response is stored for replays (a 503, where nothing
       was applied, frees the key instead);
    4. headers — the admission's rate-limit headers, or a refusal's budget headers;
    5. admission release — the concurrency slot is freed and the outcome fed to the
       adaptive limit (a replay as a success), whatever happened above.
    """
    admission, state.admission = state.admission, None
    try:
        if state.caller is not None:
            cache_finish(
                caller=state.caller,
                state=state.cache,
                response=response,
                patients=state.audit.patients,
            )
        try:
            audit_write_for(state, response)
        except FhirError as unrecorded:
            if response.status_code < 500:  # a failure already shows nothing: it stays
                response = fhir_error_json(unrecorded)
        if state.idempotency is not None:
            state.idempotency.complete(response)
            state.idempotency = None
        headers = admission.headers if admission is not None else state.refusal_headers
        for name, value in headers.items():
            response[name] = value
    finally:
        if admission is not None:
            admission.release(status=200 if state.replayed else response.status_code)
    return response


class PublicFhirView(APIView):
    """Unauthenticated tenant endpoints (metadata, SMART configuration)."""

    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []
    throttle_classes: list[Any] = []

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        self.tenant = tenant_for_url(kwargs["tenant"])

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, FhirError):
            return fhir_error_response(exc)
        if (fault := database_fault(exc)) is not None:
            return fhir_error_response(fault)
        return super().handle_exception(exc)

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        """No trusted caller: the request's audit event goes to the public trail."""
        response = super().finalize_response(request, response, *args, **kwargs)
        audit = AuditState(interaction=AuditInteraction.CAPABILITIES)
        try:
            audit_event_write(
                audit=audit,
                caller=None,
                interaction=None,
                resource_type="",
                resource_id="",
                guard=None,
                request=request._request,
                response=response,
            )
        except FhirError as unrecorded:
            if response.status_code < 500:
                return fhir_error_json(unrecorded)
        return response
