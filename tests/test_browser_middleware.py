"""Browser-only middleware (fhirplatform.middleware.for_browsers): the admin's requests get
a session, a user and messages; the API's go past them untouched."""

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory

from fhirplatform.middleware import (
    BrowserAuthenticationMiddleware,
    BrowserMessageMiddleware,
    BrowserSessionMiddleware,
)


def _chain() -> tuple[list[HttpRequest], Callable[[HttpRequest], Any]]:
    seen: list[HttpRequest] = []

    def view(request: HttpRequest) -> HttpResponse:
        seen.append(request)
        return HttpResponse("ok")

    chain = BrowserSessionMiddleware(
        BrowserAuthenticationMiddleware(BrowserMessageMiddleware(view))  # type: ignore[arg-type]
    )
    return seen, chain


def test_an_admin_request_gets_a_session_a_user_and_messages():
    seen, chain = _chain()
    chain(RequestFactory().get("/admin/"))
    assert all(hasattr(seen[0], name) for name in ("session", "user", "_messages"))


def test_an_api_request_goes_past_them():
    seen, chain = _chain()
    chain(RequestFactory().get("/fhir/provider-a/Patient/1"))
    assert not any(hasattr(seen[0], name) for name in ("session", "user", "_messages"))
