"""The refusal gate: a client flooding past its rate limit is answered 429 before Django
runs, from what this process already knows, with no database or Redis call.

A WSGI middleware around the Django application (fhirplatform/wsgi.py): a refused request
costs no Django request object, middleware chain, URL dispatch or DRF. It answers only when
every fact is cached here: the token is in the token cache and belongs to the URL's tenant
(tokens.token_cached), the request's endpoint class and resource type follow from its URL
(the views' `endpoint()`), and so does its price (a search's by its `_count`), its scope
allows it, and the limiter's refusal memo proves a rate limit or daily quota would refuse
it at that price (limits.engine.limit_refusal_known: the same 429, reason, headers and
throttle event as the pipeline's). Anything else, and every request it cannot decide,
goes to Django.

Its answer carries what the pipeline's 429 carries after Django's middleware chain (the
request id, the security and framing headers, Allow and Vary); a test compares the two.
Where the security settings make that chain depend on the request (an HTTPS redirect,
HSTS), the gate steps aside.

A client answered here did not wait as its first refusal told it to: its kept-alive
connection's next request is read up to LIMITS_FLOOD_DELAY_MS later, within the refusal
(fhirplatform/slowdown.py), so an unpaced flood gives the CPU back to other clients. The
answer itself is worked out once and sent again while the refusal certainly holds (at most
ANSWER_REUSE_SECONDS), every refusal still counted.

Each request answered here has its audit event like any other, in the caller's trail,
written just after the answer rather than before it (fhirplatform/fhir/auditing.py
audit_gate_refusal, audit/deferred.py).

Refusing can never disclose or change data, so a memoised refusal may outlive a change
made since: a token revoked a moment ago gets 429 rather than 401 until the memo lapses
(LIMITS_REFUSAL_MEMO_SECONDS), and its next request that reaches the pipeline is refused
for the revocation.
"""

import functools
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any, NamedTuple

from django.conf import settings
from django.core.handlers.wsgi import get_bytes_from_wsgi, get_path_info
from django.http import QueryDict
from django.urls import Resolver404, resolve

from fhirplatform.context import context_begin, context_end, request_id_from_header
from fhirplatform.errors import FHIR_JSON, FhirError
from fhirplatform.fhir.auditing import audit_gate_refusal
from fhirplatform.fhir.http import FhirJSONRenderer
from fhirplatform.fhir.pipeline import Endpoint, FhirView
from fhirplatform.fhir.views import search_request_cost
from fhirplatform.limits.codes import EndpointClass
from fhirplatform.limits.costs import request_cost
from fhirplatform.limits.engine import KnownRefusal, limit_refusal_known
from fhirplatform.limits.memo import refusal_memo
from fhirplatform.middleware import API_PREFIX, REQUEST_ID_HEADER, request_observed
from fhirplatform.slowdown import connection_slow_down
from tenants.scopes import Interaction, scopes_allow
from tenants.tokens import Caller, token_cached

_renderer = FhirJSONRenderer()

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


class GateRefusal(NamedTuple):
    """A request the gate refuses: the answer, and what the request asked for (its
    audit event's interaction and resource)."""

    answer: "Answer"
    interaction: Interaction
    resource_type: str
    resource_id: str


class Answer(NamedTuple):
    """A refusal as the gate sends it, all but the request id, kept for reuse."""

    refusal: KnownRefusal
    caller: Caller
    until: float  # time.monotonic()
    status: str
    headers: list[tuple[str, str]]
    body: bytes


# A refusal's answer is sent again for a moment, while it certainly holds, instead of being
# worked out for every request of a flood. Its Retry-After and RateLimit reset, rounded up
# to whole seconds, may then overstate the wait by that moment: never understate it.
ANSWER_REUSE_SECONDS = 0.1
_answers: dict[tuple[str, type[FhirView], Endpoint, int], Answer] = {}
_ANSWERS_KEPT = 10_000


def known_refusal(environ: Environ) -> GateRefusal | None:
    """The 429 the pipeline would answer this request with, if this process can tell
    without any I/O; otherwise None. Recorded (throttle event, metrics) when returned."""
    authorization = environ.get("HTTP_AUTHORIZATION")
    if refusal_memo.empty() or not authorization:
        return None  # served requests pay one dictionary read here
    path = get_path_info(environ)  # decoded as Django decodes it
    if not path.startswith(API_PREFIX) or _chain_depends_on_request():
        return None
    resolved = _fhir_view_for(path)
    if resolved is None:
        return None
    view, kwargs = resolved
    try:
        endpoint = view.endpoint(environ.get("REQUEST_METHOD", "").upper(), kwargs)
    except FhirError:
        return None  # the pipeline gives it its answer
    caller = token_cached(authorization=authorization, url_tenant_slug=kwargs["tenant"])
    if endpoint is None or caller is None:
        return None
    interaction, resource_type, endpoint_class = endpoint
    refused = functools.partial(
        GateRefusal,
        interaction=interaction,
        resource_type=resource_type,
        resource_id=str(kwargs.get("logical_id", "")),
    )
    if not scopes_allow(caller.scopes, resource_type, interaction):
        return None  # the pipeline's 403 comes first
    cost = _request_cost(endpoint_class, environ)
    if cost is None:
        return None  # the pipeline gives it its answer
    key = (caller.token_id, view, endpoint, cost)  # never the bearer token itself
    kept = _answers.get(key)
    if (
        kept is not None
        and kept.caller is caller
        and time.monotonic() < kept.until
        and kept.refusal.holds()
    ):
        kept.refusal.record()
        return refused(kept)
    refusal = limit_refusal_known(
        caller=caller, endpoint_class=endpoint_class, resource_type=resource_type, cost=cost
    )
    if refusal is None:
        _answers.pop(key, None)
        return None
    answer = _answer(refusal, caller, view)
    if len(_answers) >= _ANSWERS_KEPT:
        _answers.clear()
    _answers[key] = answer
    return refused(answer)


def _request_cost(endpoint_class: EndpointClass, environ: Environ) -> int | None:
    """What the pipeline charges the request (its view's describe(), then request_cost):
    a search by the `_count` of its URL, anything else the cost table's price. None when
    the pipeline refuses the `_count` before it counts anything."""
    declared = 1
    if endpoint_class is EndpointClass.SEARCH:
        query = QueryDict(get_bytes_from_wsgi(environ, "QUERY_STRING", ""))
        try:
            declared = search_request_cost(query.get("_count"))
        except FhirError:
            return None
    return request_cost(endpoint_class=endpoint_class, declared=declared)


def _answer(refusal: KnownRefusal, caller: Caller, view: type[FhirView]) -> Answer:
    error = refusal.error
    body = _renderer.render(error.outcome())
    return Answer(
        refusal,
        caller,
        min(time.monotonic() + ANSWER_REUSE_SECONDS, refusal.certain_until),
        f"{error.status} {HTTPStatus(error.status).phrase}",
        _headers(error, view, body),
        body,
    )


@functools.lru_cache(maxsize=4096)
def _fhir_view_for(path: str) -> tuple[type[FhirView], dict[str, Any]] | None:
    """The FHIR view a path resolves to and its URL arguments (read, never changed), or
    None; kept per path, as the URL conf does not change while the process runs."""
    try:
        match = resolve(path)
    except Resolver404:
        return None
    view = getattr(match.func, "view_class", None)
    if not (isinstance(view, type) and issubclass(view, FhirView)):
        return None
    return view, match.kwargs


def _chain_depends_on_request() -> bool:
    """Django's SecurityMiddleware redirects or adds HSTS by the request's scheme."""
    return bool(settings.SECURE_SSL_REDIRECT or settings.SECURE_HSTS_SECONDS)


_allows: dict[type[FhirView], str] = {}


def _allow(view: type[FhirView]) -> str:
    """The Allow header DRF gives the view's answers (kept per view class)."""
    allow = _allows.get(view)
    if allow is None:
        # Django's View.setup() answers HEAD with get() where a view has no head().
        answers = {m for m in view.http_method_names if hasattr(view, m)}
        if "get" in answers:
            answers.add("head")
        allow = _allows[view] = ", ".join(m.upper() for m in view.http_method_names if m in answers)
    return allow


def _headers(refusal: FhirError, view: type[FhirView], body: bytes) -> list[tuple[str, str]]:
    """The pipeline's 429 headers, and those Django's middleware chain adds to every
    response (SecurityMiddleware, XFrameOptionsMiddleware), but the request id."""
    headers = [
        ("Content-Type", FHIR_JSON),
        *refusal.headers.items(),
        ("Allow", _allow(view)),  # DRF adds Allow and Vary
        ("Vary", "Accept"),
        ("Content-Length", str(len(body))),
        ("X-Frame-Options", settings.X_FRAME_OPTIONS),
    ]
    if settings.SECURE_CONTENT_TYPE_NOSNIFF:
        headers.append(("X-Content-Type-Options", "nosniff"))
    if settings.SECURE_REFERRER_POLICY:
        policy = settings.SECURE_REFERRER_POLICY
        values = policy.split(",") if isinstance(policy, str) else policy
        headers.append(("Referrer-Policy", ",".join(v.strip() for v in values)))
    if settings.SECURE_CROSS_ORIGIN_OPENER_POLICY:
        headers.append(("Cross-Origin-Opener-Policy", settings.SECURE_CROSS_ORIGIN_OPENER_POLICY))
    return headers


class RefusalGate:
    """WSGI middleware: a known refusal is answered here; everything else goes to `app`."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        refused = known_refusal(environ)
        if refused is None:
            return self.app(environ, start_response)
        answer = refused.answer
        request_id = request_id_from_header(environ.get("HTTP_X_REQUEST_ID"))
        context_begin(request_id=request_id)
        try:
            start_response(answer.status, [*answer.headers, (REQUEST_ID_HEADER, request_id)])
            # The client did not wait as told: its next request is read later, within
            # the refusal, when the server supports it (fhirplatform/slowdown.py).
            holds_for = answer.refusal.certain_until - time.monotonic()
            connection_slow_down(environ, min(settings.LIMITS_FLOOD_DELAY_MS / 1000, holds_for))
            request_observed(
                method=environ.get("REQUEST_METHOD", ""),
                path=get_path_info(environ),
                status=answer.refusal.error.status,
                started=started,
            )
            audit_gate_refusal(
                caller=answer.caller,
                interaction=refused.interaction,
                resource_type=refused.resource_type,
                resource_id=refused.resource_id,
                error=answer.refusal.error,
                environ=environ,
                request_id=request_id,
                started=started,
            )
            return [answer.body]
        finally:
            context_end()
