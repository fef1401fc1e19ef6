"""The refusal gate: a client flooding past its rate limit is answered 429 before the FHIR
pipeline runs, from what this process already knows, with no database or Redis call.

A middleware early in the chain (after the request id and the security headers, before
sessions, CSRF, URL dispatch and DRF). It answers only when every fact is cached here:
the token is in the token cache and belongs to the URL's tenant (tokens.token_cached),
the request's endpoint class and resource type follow from its URL (the views'
`endpoint()`), its scope allows it, and the limiter's refusal memo proves a rate limit or
daily quota would refuse it (limits.engine.limit_refusal_known: the same 429, reason,
headers and throttle event as the pipeline's). Anything else, and every request it cannot
decide, goes down the chain.

Refusing can never disclose or change data, so a memoised refusal may outlive a change
made since: a token revoked a moment ago gets 429 rather than 401 until the memo lapses
(LIMITS_REFUSAL_MEMO_SECONDS), and its next request that reaches the pipeline is refused
for the revocation.
"""

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import Resolver404, resolve

from fhirplatform.errors import FHIR_JSON, FhirError
from fhirplatform.fhir.http import FhirJSONRenderer
from fhirplatform.fhir.pipeline import FhirView
from fhirplatform.limits.engine import limit_refusal_known
from fhirplatform.limits.memo import refusal_memo
from tenants.scopes import scopes_allow
from tenants.tokens import token_cached

FHIR_PREFIX = "/fhir/"
_renderer = FhirJSONRenderer()


def known_refusal(request: HttpRequest) -> tuple[FhirError, type[FhirView]] | None:
    """The 429 the pipeline would answer this request with, and the view it would have
    reached, if this process can tell without any I/O; otherwise None."""
    authorization = request.META.get("HTTP_AUTHORIZATION")
    if refusal_memo.empty() or not authorization or not request.path_info.startswith(FHIR_PREFIX):
        return None  # served requests pay one dictionary read here
    try:
        match = resolve(request.path_info)
        view = getattr(match.func, "view_class", None)
        if not (isinstance(view, type) and issubclass(view, FhirView)):
            return None
        endpoint = view.endpoint(request.method or "", match.kwargs)
    except (FhirError, Resolver404):
        return None  # the pipeline gives these their answers
    caller = token_cached(authorization=authorization, url_tenant_slug=match.kwargs["tenant"])
    if endpoint is None or caller is None:
        return None
    interaction, resource_type, endpoint_class = endpoint
    if not scopes_allow(caller.scopes, resource_type, interaction):
        return None  # the pipeline's 403 comes first
    refusal = limit_refusal_known(
        caller=caller, endpoint_class=endpoint_class, resource_type=resource_type
    )
    return None if refusal is None else (refusal, view)


def _response(refusal: FhirError, view: type[FhirView]) -> HttpResponse:
    """The refusal with the headers the pipeline's would carry. The middlewares after
    this one add some of them to every response; DRF adds Allow and Vary."""
    body = _renderer.render(refusal.outcome())
    response = HttpResponse(body, status=refusal.status, content_type=FHIR_JSON)
    for name, value in refusal.headers.items():
        response[name] = value
    # Django's View.setup() answers HEAD with get() where a view has no head().
    answers = {m for m in view.http_method_names if hasattr(view, m)}
    if "get" in answers:
        answers.add("head")
    allowed = [method.upper() for method in view.http_method_names if method in answers]
    response["Allow"] = ", ".join(allowed)
    response["Vary"] = "Accept"
    response["X-Frame-Options"] = settings.X_FRAME_OPTIONS
    response["Content-Length"] = str(len(body))
    return response


class RefusalGateMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        known = known_refusal(request)
        if known is None:
            return self.get_response(request)
        return _response(*known)
