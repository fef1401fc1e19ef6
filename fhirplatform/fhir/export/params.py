"""A kick-off's parameters (Bulk Data IG v2), from the query of a GET or the Parameters
body of a POST, checked into an ExportRequest before any job exists.

Every parameter the platform does not serve, or serves but not with that value, is a 400
OperationOutcome, unless the client sent `Prefer: handling=lenient`: then it is left out
and named in the kick-off's answer and the manifest's error file. A value that is not
even well-formed (a `_since` that is no instant, a `_typeFilter` that does not parse) is
a 400 either way, as a search's bad value is.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from django.utils.dateparse import parse_datetime

from fhirplatform.errors import FhirError, Issue, IssueCode, Severity
from fhirplatform.fhir.compartments import PATIENT, PATIENT_DATA_TYPES
from fhirplatform.fhir.export.models import ExportLevel
from fhirplatform.fhir.models import RELATIVE_REFERENCE
from fhirplatform.fhir.search.parsing import IGNORED_CONTROL, search_parse
from fhirplatform.fhir.search.selectors import search_matches
from fhirplatform.resource_types import R4_RESOURCE_TYPES, STORED_RESOURCE_TYPES
from tenants.scopes import Interaction, scopes_allow
from tenants.tokens import Caller

NDJSON = "application/fhir+ndjson"
OUTPUT_FORMATS = frozenset({NDJSON, "application/ndjson", "ndjson"})
# A _typeFilter is criteria only: what shapes a searchset has no meaning in a file.
_FILTER_CONTROLS = frozenset(
    {"_count", "_sort", "_summary", "_elements", "_include", "_revinclude", "_total", "_type"}
)
_SERVED = frozenset({"_outputFormat", "_since", "_type", "_typeFilter", "_elements", "patient"})
# Known to the IG, not served: named as not supported rather than as unknown.
_NOT_SERVED = frozenset({"includeAssociatedData", "_until", "organizeOutputBy"})


@dataclass
class ExportRequest:
    level: ExportLevel
    resource_types: list[str]
    output_format: str = NDJSON
    since: datetime | None = None
    type_filters: dict[str, list[str]] = field(default_factory=dict)
    elements: list[str] = field(default_factory=list)
    patients: list[str] = field(default_factory=list)
    # What a lenient kick-off left out, one diagnostics text each.
    skipped: list[str] = field(default_factory=list)


class _Checker:
    """Collects what is wrong: raised at once (strict), or noted and skipped (lenient)."""

    def __init__(self, *, lenient: bool) -> None:
        self.lenient = lenient
        self.skipped: list[str] = []

    def unsupported(self, name: str, diagnostics: str) -> None:
        if not self.lenient:
            raise FhirError(400, IssueCode.NOT_SUPPORTED, diagnostics, expression=[name])
        self.skipped.append(diagnostics)


def _invalid(name: str, diagnostics: str) -> FhirError:
    return FhirError(400, IssueCode.VALUE, diagnostics, expression=[name])


def parameters_from_body(body: Any) -> list[tuple[str, Any]]:
    """A POST kick-off's Parameters resource as (name, value) pairs; 400 for anything else."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise FhirError(400, IssueCode.STRUCTURE, "A POST kick-off's body must be a Parameters")
    pairs: list[tuple[str, Any]] = []
    for parameter in body.get("parameter") or []:
        if not isinstance(parameter, dict) or not isinstance(parameter.get("name"), str):
            raise FhirError(400, IssueCode.STRUCTURE, "Every parameter needs a name")
        values = [v for k, v in parameter.items() if k.startswith("value")]
        if len(values) != 1:
            raise _invalid(parameter["name"], f"{parameter['name']} needs exactly one value[x]")
        pairs.append((parameter["name"], values[0]))
    return pairs


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _invalid(name, f"{name} must be a non-empty string")
    return value.strip()


def _words(values: Iterable[str]) -> list[str]:
    return [word.strip() for value in values for word in value.split(",") if word.strip()]


def _since(name: str, value: Any) -> datetime:
    text = _text(name, value)
    try:
        parsed = parse_datetime(text)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise _invalid(name, f"_since must be a FHIR instant with a time zone, not '{text[:64]}'")
    return parsed


def _patient_id(value: Any) -> str:
    reference = value.get("reference") if isinstance(value, dict) else None
    match = RELATIVE_REFERENCE.fullmatch(reference) if isinstance(reference, str) else None
    if match is None or match["type"] != PATIENT or match["version"]:
        raise _invalid("patient", "patient must be a valueReference to Patient/<id>")
    return match["id"]


def _level_types(level: ExportLevel) -> frozenset[str]:
    """What the level exports: every stored type, or a patient's data."""
    return STORED_RESOURCE_TYPES if level is ExportLevel.SYSTEM else PATIENT_DATA_TYPES


def exportable_types(*, level: ExportLevel, caller: Caller) -> list[str]:
    """Every type the level exports that the caller's scopes let it read, sorted."""
    return sorted(
        t for t in _level_types(level) if scopes_allow(caller.scopes, t, Interaction.EXPORT)
    )


def _types(
    requested: list[str], *, level: ExportLevel, caller: Caller, checker: _Checker
) -> list[str]:
    """The types to export, in a stable order: those `_type` names (or, without it, every
    type the level holds) that the caller's scopes let it read."""
    exportable = _level_types(level)
    if not requested:
        return exportable_types(level=level, caller=caller)
    types: list[str] = []
    for name in dict.fromkeys(requested):
        if name not in R4_RESOURCE_TYPES:
            raise _invalid("_type", f"_type: '{name[:64]}' is not an R4 resource type")
        if name not in exportable:
            where = "the Patient compartment" if level is not ExportLevel.SYSTEM else "the store"
            checker.unsupported("_type", f"_type: {name} is not exported from {where}")
        elif not scopes_allow(caller.scopes, name, Interaction.EXPORT):
            checker.unsupported("_type", f"_type: {name} is outside the token's scopes")
        else:
            types.append(name)
    return types


def _type_filters(
    values: list[str], types: list[str], *, caller: Caller, base_url: str, checker: _Checker
) -> dict[str, list[str]]:
    filters: dict[str, list[str]] = {}
    for value in _words(values):
        resource_type, mark, query = value.partition("?")
        if not mark or not query or resource_type not in R4_RESOURCE_TYPES:
            raise _invalid("_typeFilter", f"_typeFilter: '{value[:120]}' is not Type?criteria")
        if resource_type not in types:
            checker.unsupported(
                "_typeFilter", f"_typeFilter: {resource_type} is not among the exported types"
            )
            continue
        params = parse_qsl(query, keep_blank_values=True)
        if controls := sorted({n for n, _ in params} & _FILTER_CONTROLS):
            raise _invalid("_typeFilter", f"_typeFilter: {', '.join(controls)} cannot filter")
        parsed = search_parse(resource_type=resource_type, params=params, strict=True)
        # Scopes of the types its chains reach, checked now rather than by the worker.
        search_matches(caller=caller, request=parsed, base_url=base_url, consent=None)
        filters.setdefault(resource_type, []).append(query)
    return filters


def _elements(values: list[str], types: list[str]) -> list[str]:
    elements = _words(values)
    for element in elements:
        resource_type, _, name = element.rpartition(".")
        if not name.isidentifier() or (resource_type and resource_type not in types):
            raise _invalid("_elements", f"_elements: '{element[:120]}' is not [Type.]element")
    return elements


def export_request_parse(
    *,
    level: ExportLevel,
    params: list[tuple[str, Any]],
    caller: Caller,
    base_url: str,
    lenient: bool,
    posted: bool,
) -> ExportRequest:
    """Check a kick-off's parameters. `posted`: they came in a Parameters body (the only
    place `patient` may be given, as the IG has it)."""
    checker = _Checker(lenient=lenient)
    named: dict[str, list[Any]] = {}
    for name, value in params:
        if name in IGNORED_CONTROL:  # _format, _pretty: as on every FHIR request
            continue
        if name in _SERVED:
            named.setdefault(name, []).append(value)
        elif name in _NOT_SERVED:
            checker.unsupported(name, f"{name} is not supported")
        else:
            checker.unsupported(name, f"Unknown parameter {name[:64]}")
    output_format = NDJSON
    for value in named.get("_outputFormat", []):
        if _text("_outputFormat", value) not in OUTPUT_FORMATS:
            checker.unsupported("_outputFormat", f"_outputFormat {str(value)[:64]} is not served")
    since = [_since("_since", value) for value in named.get("_since", [])]
    if len(since) > 1:
        raise _invalid("_since", "_since may be given once")
    requested = _words(_text("_type", v) for v in named.get("_type", []))
    types = _types(requested, level=level, caller=caller, checker=checker)
    if not types:  # without _type, the scope step has seen to it that there are some
        raise FhirError(
            400,
            IssueCode.NOT_SUPPORTED,
            "Nothing to export: no requested type is exportable under the token's scopes",
            expression=["_type"],
        )
    filters = [_text("_typeFilter", v) for v in named.get("_typeFilter", [])]
    elements = [_text("_elements", v) for v in named.get("_elements", [])]
    patients: list[str] = []
    if named.get("patient"):
        if not posted or level is ExportLevel.SYSTEM:
            checker.unsupported("patient", "patient is served in a POST Patient or Group kick-off")
        else:
            patients = list(dict.fromkeys(_patient_id(v) for v in named["patient"]))
    return ExportRequest(
        level=level,
        resource_types=types,
        output_format=output_format,
        since=since[0] if since else None,
        type_filters=_type_filters(
            filters, types, caller=caller, base_url=base_url, checker=checker
        ),
        elements=_elements(elements, types),
        patients=patients,
        skipped=checker.skipped,
    )


def skipped_issues(skipped: list[str]) -> list[Issue]:
    """What a lenient kick-off left out, as warnings."""
    return [
        Issue(code=IssueCode.NOT_SUPPORTED, diagnostics=text, severity=Severity.WARNING)
        for text in skipped
    ]
