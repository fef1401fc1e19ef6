import logging
import time
from collections.abc import Callable

from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.messages.middleware import MessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.utils.deprecation import MiddlewareMixin

from fhirplatform.context import context_begin, context_end, request_id_from_header
from fhirplatform.db.faults import database_fault
from fhirplatform.errors import fhir_error_json
from fhirplatform.fhir.http import wants_outcome
from fhirplatform.metrics import LATENCY, REQUESTS, route_class
from fhirplatform.schemas import schema_public

logger = logging.getLogger("fhirplatform.request")

REQUEST_ID_HEADER = "X-Request-ID"
API_PREFIX = "/fhir/"


class RequestContextMiddleware:
    """First in the chain: a request id for every request, echoed on every response."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = request_id_from_header(request.headers.get(REQUEST_ID_HEADER))
        request.request_id = request_id  # type: ignore[attr-defined]
        context_begin(request_id=request_id)
        started = request.started = time.perf_counter()  # type: ignore[attr-defined]
        try:
            response = self.get_response(request)
            response[REQUEST_ID_HEADER] = request_id
            request_observed(
                method=request.method or "",
                path=request.path,
                status=response.status_code,
                started=started,
            )
            return response
        finally:
            context_end()


def request_observed(*, method: str, path: str, status: int, started: float) -> None:
    """Every answered request, counted and timed (Prometheus) and logged: the Django
    requests here, the refusal gate's before Django (fhirplatform/fhir/gate.py)."""
    elapsed = time.perf_counter() - started
    route = route_class(path)
    REQUESTS.labels(route=route, status=str(status)).inc()
    LATENCY.labels(route=route).observe(elapsed)
    logger.info(
        "request",
        extra={
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": round(elapsed * 1000, 2),
        },
    )


class PublicSchemaMiddleware:
    """Every request starts, and ends, in the public schema.

    Only the FHIR pipeline moves the connection into a tenant schema, and only
    into the schema of the authenticated token's tenant.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        schema_public()
        try:
            return self.get_response(request)
        finally:
            schema_public()


class DatabaseFaultMiddleware:
    """A view that fails because the database is down answers 503 with Retry-After.

    The token endpoint, the probes' callers and the admin meet the outage here; FHIR
    views answer it in their own pipeline (it renders every error they raise). The API
    gets an OperationOutcome (`transient`), the admin a plain page.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        fault = database_fault(exception)
        if fault is None:
            return None
        logger.error(
            "database unavailable",
            extra={"path": request.path, "error": f"{type(exception).__name__}: {exception}"},
        )
        if wants_outcome(request):
            return fhir_error_json(fault)
        return HttpResponse(
            "<!doctype html><title>Service unavailable</title>"
            "<h1>Service unavailable</h1><p>The database cannot be reached. Try again shortly.</p>",
            status=503,
            headers=fault.headers,
        )


def for_browsers(middleware: type[MiddlewareMixin]) -> type[MiddlewareMixin]:
    """`middleware` for the admin's and the portal's requests only. An API request (a
    bearer token; no cookie, form or page) goes past it untouched and pays nothing for
    the session, CSRF cookie, user or messages it never uses."""

    class ForBrowsers(middleware):  # type: ignore[valid-type,misc]
        def __call__(self, request: HttpRequest) -> HttpResponse:
            if request.path_info.startswith(API_PREFIX):
                return self.get_response(request)  # type: ignore[no-any-return]
            return super().__call__(request)  # type: ignore[no-any-return]

    ForBrowsers.__name__ = ForBrowsers.__qualname__ = f"{middleware.__name__}ForBrowsers"
    return ForBrowsers


BrowserSessionMiddleware = for_browsers(SessionMiddleware)
BrowserCsrfViewMiddleware = for_browsers(CsrfViewMiddleware)
BrowserAuthenticationMiddleware = for_browsers(AuthenticationMiddleware)
BrowserMessageMiddleware = for_browsers(MessageMiddleware)
