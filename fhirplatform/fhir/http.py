"""FHIR JSON over HTTP: media types, parsing, and OperationOutcome error responses."""

import json
import re
from typing import Any

import orjson
from django.http import HttpRequest, HttpResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.parsers import BaseParser
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request
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
from fhirplatform.fhir.numbers import (
    ExactFloat,
    exact_dumps,
    exact_float,
    exact_fragment,
    exact_loads,
)


class JsonText:
    """A JSON value already serialised: a stored resource as PostgreSQL returns it
    (`content::text`). Rendered as it is, alone or inside a Bundle, neither parsed nor
    dumped again, so its numbers go out exactly as they were stored.

    Not a dataclass: orjson would serialise one as an object of its fields."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"JsonText({self.text[:60]!r})"

    def parsed(self) -> Any:
        """The value, for a caller that must look inside it (its numbers exact)."""
        return exact_loads(self.text)


# orjson serialises only what the standard library would; anything else is left to it.
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


def _fragment(value: Any) -> orjson.Fragment:
    if isinstance(value, JsonText):
        return orjson.Fragment(value.text)
    return exact_fragment(value)


def json_render(data: Any) -> bytes:
    """Every JSON document the FHIR API sends, compact and in UTF-8.

    orjson renders a 50-entry searchset about ten times faster than the standard library,
    and embeds stored JSON (JsonText) without parsing it; a decimal read from a client's
    JSON goes out with the digits it came with (numbers.py). An integer past 64 bits,
    which orjson refuses, is written as its digits on a second try, never rounded.
    """
    if isinstance(data, JsonText):
        return data.text.encode()
    return exact_dumps(data, default=_fragment, option=_ORJSON_OPTIONS)


class FhirJSONRenderer(BaseRenderer):
    media_type = FHIR_JSON
    format = "json"
    charset = "utf-8"

    def render(
        self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None
    ) -> bytes:
        if data is None:
            return b""
        return json_render(data)


class PlainJSONRenderer(FhirJSONRenderer):
    """Clients that ask for application/json get the same FHIR JSON."""

    media_type = "application/json"


# Deeper than any resource's structure goes; refused before anything recursive (the
# validators, the JSON encoders, jsonb) meets the value.
MAX_JSON_DEPTH = 100
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_DIGITS = re.compile(r"[0-9]{1,18}")


def _not_json(diagnostics: str) -> FhirError:
    return FhirError(400, IssueCode.STRUCTURE, f"Request body is not valid JSON: {diagnostics}")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Python keeps the last of duplicate keys: {"resourceType": "Observation",
    # "resourceType": "Patient"} would be checked as one thing and stored as another.
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            # Checked before the surrogate check, so the key is shown escaped where it must be.
            shown = key[:100].encode("utf-8", "backslashreplace").decode()
            raise _not_json(f"the key '{shown}' appears twice in one object")
        found[key] = value
    return found


def _finite(text: str) -> ExactFloat | int:
    try:
        return exact_float(text)
    except ValueError as range_error:
        raise _not_json(str(range_error)) from None


def _constant(name: str) -> None:
    raise _not_json(f"{name} is not a JSON value")


def _shape_check(value: Any) -> None:
    """Depth within MAX_JSON_DEPTH, and no lone UTF-16 surrogate in a key or string
    (`"\\ud800"` parses, but is no character: it can be neither stored nor sent back)."""
    stack = [(value, 1)]
    while stack:
        current, depth = stack.pop()
        if isinstance(current, str):
            if _SURROGATE.search(current):
                raise _not_json("a string holds a lone UTF-16 surrogate (\\ud800-\\udfff)")
            continue
        if not isinstance(current, dict | list):
            continue
        if depth > MAX_JSON_DEPTH:
            raise _not_json(f"nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(current, dict):
            stack.extend((key, depth) for key in current)
            stack.extend((child, depth + 1) for child in current.values())
        else:
            stack.extend((child, depth + 1) for child in current)


def json_parse(raw: bytes | str) -> Any:
    """Every JSON document the FHIR API reads (bodies, and the JSON Patch inside a Bundle):
    UTF-8, no duplicate keys, no NaN/Infinity, at most MAX_JSON_DEPTH deep, no lone
    surrogates; anything else is a 400."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        value = json.loads(
            text, object_pairs_hook=_object, parse_float=_finite, parse_constant=_constant
        )
    except RecursionError:
        # The C decoder stops at the interpreter's recursion limit (~1,000 levels).
        raise _not_json(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # UnicodeDecodeError included
        raise _not_json(str(exc)) from exc
    _shape_check(value)
    return value


def digits_parse(text: str) -> int | None:
    """The number 1-18 ASCII digits spell, else None. Every integer a request carries
    (_count, version ids, ETags, Content-Length) is read here: str.isdigit() and int()
    also take '١٢' and '²' (and int('²') then fails); 18 digits is above any limit here."""
    return int(text) if _DIGITS.fullmatch(text) else None


def query_pairs(request: Request) -> list[tuple[str, str]]:
    """The request's query as (name, value) pairs, in the order sent, repeats kept."""
    return [(name, value) for name, values in request.query_params.lists() for value in values]


class FhirJSONParser(BaseParser):
    media_type = FHIR_JSON

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        return json_parse(stream.read())


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


def wants_outcome(request: HttpRequest) -> bool:
    # The admin and the portal are HTML; every other error body is an OperationOutcome.
    return not request.path.startswith(("/admin/", "/portal/"))


def handler400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Requests Django refuses before routing (e.g. a Host outside ALLOWED_HOSTS)."""
    if not wants_outcome(request):
        return defaults.bad_request(request, exception or Exception())
    return fhir_error_json(FhirError(400, IssueCode.INVALID, "Bad request"))


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if not wants_outcome(request):
        return defaults.page_not_found(request, exception or Exception())
    return fhir_error_json(not_found())


def handler500(request: HttpRequest) -> HttpResponse:
    if not wants_outcome(request):
        return defaults.server_error(request)
    return fhir_error_json(
        FhirError(
            500, IssueCode.EXCEPTION, "Internal error; quote the X-Request-ID when reporting it"
        )
    )
