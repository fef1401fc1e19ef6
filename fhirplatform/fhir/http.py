"""FHIR JSON over HTTP: media types, parsing, and OperationOutcome error responses."""

import json
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.parsers import BaseParser
from rest_framework.renderers import BaseRenderer
from rest_framework.response import Response

from fhirplatform.errors import (
    FHIR_JSON,
    FhirError,
    Issue,
    IssueCode,
    fhir_error_json,
    not_found,
    operation_outcome,
)


class FhirJSONRenderer(BaseRenderer):
    media_type = FHIR_JSON
    format = "json"
    charset = "utf-8"

    def render(
        self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None
    ) -> bytes:
        if data is None:
            return b""
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


class PlainJSONRenderer(FhirJSONRenderer):
    """Clients that ask for application/json get the same FHIR JSON."""

    media_type = "application/json"


class FhirJSONParser(BaseParser):
    media_type = FHIR_JSON

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            return json.loads(stream.read().decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise FhirError(
                400, IssueCode.STRUCTURE, f"Request body is not valid JSON: {exc}"
            ) from exc


class PlainJSONParser(FhirJSONParser):
    media_type = "application/json"


def outcome_response(
    status_code: int, outcome: dict[str, Any], headers: dict[str, str] | None = None
) -> Response:
    response = Response(outcome, status=status_code, content_type=FHIR_JSON)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def fhir_error_response(error: FhirError) -> Response:
    return outcome_response(error.status, error.outcome(), error.headers)


_DRF_ISSUE_CODES = {
    status.HTTP_400_BAD_REQUEST: IssueCode.STRUCTURE,
    status.HTTP_401_UNAUTHORIZED: IssueCode.LOGIN,
    status.HTTP_403_FORBIDDEN: IssueCode.FORBIDDEN,
    status.HTTP_404_NOT_FOUND: IssueCode.NOT_FOUND,
    status.HTTP_405_METHOD_NOT_ALLOWED: IssueCode.NOT_SUPPORTED,
    status.HTTP_406_NOT_ACCEPTABLE: IssueCode.NOT_SUPPORTED,
    status.HTTP_415_UNSUPPORTED_MEDIA_TYPE: IssueCode.NOT_SUPPORTED,
}


def drf_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Every error leaving a DRF view is an OperationOutcome."""
    if isinstance(exc, FhirError):
        return fhir_error_response(exc)
    if isinstance(exc, exceptions.APIException):
        code = _DRF_ISSUE_CODES.get(exc.status_code, IssueCode.PROCESSING)
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return outcome_response(
            exc.status_code, operation_outcome(Issue(code=code, diagnostics=str(detail)))
        )
    return None


def _wants_outcome(request: HttpRequest) -> bool:
    # The admin and the portal are HTML; every other error body is an OperationOutcome.
    return not request.path.startswith(("/admin/", "/portal/"))


def handler400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Requests Django refuses before routing (e.g. a Host outside ALLOWED_HOSTS)."""
    if not _wants_outcome(request):
        return defaults.bad_request(request, exception or Exception())
    return fhir_error_json(FhirError(400, IssueCode.INVALID, "Bad request"))


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if not _wants_outcome(request):
        return defaults.page_not_found(request, exception or Exception())
    return fhir_error_json(not_found())


def handler500(request: HttpRequest) -> HttpResponse:
    if not _wants_outcome(request):
        return defaults.server_error(request)
    return fhir_error_json(
        FhirError(
            500, IssueCode.EXCEPTION, "Internal error; quote the X-Request-ID when reporting it"
        )
    )
