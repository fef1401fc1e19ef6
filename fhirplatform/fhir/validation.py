"""Validation of every resource before it is written.

Three layers, all of which must pass before anything is stored:

1. the fhir.resources R4B model of the type (structure, cardinality, primitive formats);
2. checks the model skips: required-binding codes of the core types (the models type
   them as plain strings; the tables are in required_bindings.py), resource id length,
   reference format, NUL characters (PostgreSQL cannot store them), contained resources
   without an id or with resources of their own;
3. agreement with the request: resourceType and id against the URL, payload size.

R4 types that R4B dropped (MedicinalProduct*, *EvidenceSynthesis, Substance* details)
have no model, and the R4 types whose R4B model would refuse valid R4 (r4b_differences.json,
built from both releases' StructureDefinitions by scripts/build_r4b_differences.py) must
not use theirs: both are checked by R4's structure as DomainResources (see docs/fhir.md).
"""

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from django.conf import settings
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.element import Element
from pydantic import ValidationError

from fhirplatform.errors import FhirError, Issue, IssueCode
from fhirplatform.fhir.http import digits_parse
from fhirplatform.fhir.models import RELATIVE_REFERENCE, id_valid
from fhirplatform.fhir.required_bindings import NARRATIVE_STATUS, REQUIRED_CODES, REQUIRED_CONCEPTS
from fhirplatform.resource_types import NOT_STORED, R4_RESOURCE_TYPES

_ELEMENT_NAME = re.compile(r"^_?[a-z][A-Za-z0-9]*$")
# R4 allows any absolute URL as a reference (it need not end in Type/id: a document at
# http://example.org/g.pdf) and any URN; such references are stored, not resolved.
_ABSOLUTE_URL = re.compile(r"^https?://[^/\s]+(/\S*)?$")
_URN_REFERENCE = re.compile(r"^urn:[A-Za-z0-9][A-Za-z0-9-]{0,31}:\S+$")
# The primitive extension of an extension's value (`extension[].\_valueString`).
_VALUE_EXTENSION = re.compile(r"^_value[A-Z][A-Za-z0-9]*$")


def _has_r4b_model(resource_type: str) -> bool:
    try:
        get_fhir_model_class(resource_type)
    except (KeyError, ValueError, ImportError, AttributeError):
        return False
    return True


# Types of R4 that R4B removed: no R4B model exists, so they get the DomainResource checks.
R4_ONLY_TYPES: frozenset[str] = frozenset(t for t in R4_RESOURCE_TYPES if not _has_r4b_model(t))
# Types whose R4B model refuses valid R4 (what differs, per element: r4b_differences.json).
R4B_DIFFERENT_TYPES: frozenset[str] = frozenset(
    json.loads((Path(__file__).parent / "r4b_differences.json").read_text())
)
# Checked by R4's structure rather than an R4B model.
STRUCTURAL_TYPES = R4_ONLY_TYPES | R4B_DIFFERENT_TYPES
_MODEL_TYPES = R4_RESOURCE_TYPES - STRUCTURAL_TYPES


def _invalid(diagnostics: str, expression: str, code: IssueCode = IssueCode.VALUE) -> Issue:
    return Issue(code=code, diagnostics=diagnostics, expression=[expression])


def payload_check(meta: Mapping[str, Any]) -> None:
    """A write's body must announce its size (Content-Length) and stay within the limit.
    A chunked body is refused before it is read: its size is unknown until the end."""
    if "CONTENT_LENGTH" not in meta and "chunked" in meta.get("HTTP_TRANSFER_ENCODING", "").lower():
        raise FhirError(
            411,
            IssueCode.STRUCTURE,
            "Send the body with a Content-Length header; chunked transfer encoding is not accepted",
        )
    size = digits_parse(meta.get("CONTENT_LENGTH") or "0")
    if size is None:
        raise FhirError(400, IssueCode.STRUCTURE, "Content-Length must be a number of bytes")
    limit = settings.FHIR_MAX_PAYLOAD_BYTES
    if size > limit:
        raise FhirError(
            413, IssueCode.TOO_COSTLY, f"Payload of {size} bytes exceeds the limit of {limit} bytes"
        )


def resource_type_check(resource_type: str) -> None:
    """The type in a URL, Bundle entry or loaded file must be an R4 resource type (404 like
    any unknown path) that the resource store holds (AuditEvent is the audit trail)."""
    if resource_type not in R4_RESOURCE_TYPES:
        raise FhirError(
            404, IssueCode.NOT_SUPPORTED, f"'{resource_type}' is not an R4 resource type"
        )
    if resource_type in NOT_STORED:
        raise FhirError(400, IssueCode.NOT_SUPPORTED, NOT_STORED_DETAIL)


NOT_STORED_DETAIL = (
    "AuditEvent is the platform's audit trail: read [base]/AuditEvent/<id> and search "
    "[base]/AuditEvent; it is never written, versioned or put in a Bundle through FHIR"
)


def _expression(resource_type: str, loc: tuple[Any, ...]) -> str:
    path = resource_type
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part == "resource_type":
            path += ".resourceType"
        else:
            path += f".{str(part).removesuffix('__ext').replace('__ext', '')}"
    return path


# FHIR's pattern of a `code`, `^[^\s]+(\s[^\s]+)*$`, is XML Schema's, whose \s is space, tab,
# CR and LF only; in the models' (Python) regex \s also matches U+00A0 and the other
# Unicode spaces, so they refuse codes R4 allows. A mismatch is checked again by R4's.
_CODE_PATTERN = r"^[^\s]+(\s[^\s]+)*$"
_R4_CODE = re.compile(r"[^ \t\r\n]+([ \t\r\n][^ \t\r\n]+)*")


def _r4_allows(error: Any) -> bool:
    return (
        error["type"] == "string_pattern_mismatch"
        and (error.get("ctx") or {}).get("pattern") == _CODE_PATTERN
        and isinstance(error.get("input"), str)
        and _R4_CODE.fullmatch(error["input"]) is not None
    )


def _validation_issues(model: Any, value: Any, path: str) -> list[Issue]:
    try:
        model.model_validate(value)
    except ValidationError as exc:
        issues = []
        for error in [e for e in exc.errors() if not _r4_allows(e)][:20]:
            expression = _expression(path, tuple(error["loc"]))
            code = IssueCode.REQUIRED if "missing" in error["type"] else IssueCode.STRUCTURE
            message = " ".join(str(error["msg"]).split())
            issues.append(_invalid(f"{expression}: {message}", expression, code))
        return issues
    return []


def _model_issues(resource_type: str, content: dict[str, Any]) -> list[Issue]:
    """The R4B model's verdict. The model's Extension has no field for the primitive
    extension of its value (`_valueString`), valid R4 that it refuses: those are taken out
    first and checked as the Elements they are."""
    content, value_extensions = _value_extensions_apart(content, resource_type)
    issues = _validation_issues(get_fhir_model_class(resource_type), content, resource_type)
    for path, value in value_extensions:
        issues += _validation_issues(Element, value, path)
    return issues


def _has_value_extension(content: Any) -> bool:
    """Whether any extension in `content` has a `_valueX` (a scan that builds nothing: the
    common answer is no, on every write)."""
    stack: list[tuple[Any, bool]] = [(content, False)]
    while stack:
        value, in_extension = stack.pop()
        if isinstance(value, list):
            stack.extend((item, in_extension) for item in value)
        elif isinstance(value, dict):
            for key, child in value.items():
                if in_extension and _VALUE_EXTENSION.match(key):
                    return True
                stack.append((child, key in ("extension", "modifierExtension")))
    return False


def _value_extensions_apart(content: Any, path: str) -> tuple[Any, list[tuple[str, Any]]]:
    """`content` without the `_valueX` of any extension (a copy only where one is found),
    and each one taken, with its path."""
    taken: list[tuple[str, Any]] = []
    if not _has_value_extension(content):
        return content, taken

    def walk(value: Any, where: str, in_extension: bool) -> Any:
        if isinstance(value, list):
            items = [
                walk(item, f"{where}[{index}]", in_extension) for index, item in enumerate(value)
            ]
            return value if all(a is b for a, b in zip(items, value, strict=True)) else items
        if not isinstance(value, dict):
            return value
        kept: dict[str, Any] = {}
        changed = False
        for key, child in value.items():
            if in_extension and _VALUE_EXTENSION.match(key):
                taken.append((f"{where}.{key}", child))
                changed = True
                continue
            kept[key] = walk(child, f"{where}.{key}", key in ("extension", "modifierExtension"))
            changed = changed or kept[key] is not child
        return kept if changed else value

    return walk(content, path, False), taken


_DOMAIN_RESOURCE_KEYS = (
    "resourceType",
    "id",
    "meta",
    "implicitRules",
    "_implicitRules",
    "language",
    "_language",
    "text",
    "contained",
    "extension",
    "modifierExtension",
)


def _r4_only_issues(resource_type: str, content: dict[str, Any]) -> list[Issue]:
    """Types checked by R4's structure (no R4B model, or one that differs): the
    DomainResource part by model, the rest by element names."""
    base = {key: content[key] for key in _DOMAIN_RESOURCE_KEYS if key in content}
    base["resourceType"] = "DomainResource"
    issues = _model_issues("DomainResource", base)
    for issue in issues:
        issue.expression = [e.replace("DomainResource", resource_type, 1) for e in issue.expression]
    for key, value in content.items():
        if key in _DOMAIN_RESOURCE_KEYS:
            continue
        if not _ELEMENT_NAME.match(key):
            issues.append(
                _invalid(
                    f"'{key}' is not an element name", f"{resource_type}.{key}", IssueCode.STRUCTURE
                )
            )
        elif value is None or value == "" or value == [] or value == {}:
            issues.append(
                _invalid(
                    f"{resource_type}.{key} must not be empty",
                    f"{resource_type}.{key}",
                    IssueCode.STRUCTURE,
                )
            )
    return issues


def _binding_issues(resource_type: str, content: dict[str, Any]) -> list[Issue]:
    # The R4B models type `code` as a pattern-checked string, so "status": "done" passes
    # them; a modifier element such as status with an unknown code would change meaning.
    issues = []
    for element, codes in REQUIRED_CODES.get(resource_type, {}).items():
        values = content.get(element)
        for index, value in enumerate(values if isinstance(values, list) else [values]):
            if value is not None and value not in codes:
                expression = f"{resource_type}.{element}" + (
                    f"[{index}]" if isinstance(values, list) else ""
                )
                issues.append(
                    _invalid(
                        f"{expression} '{value}' is not one of: {', '.join(codes)}", expression
                    )
                )
    for element, (system, codes) in REQUIRED_CONCEPTS.get(resource_type, {}).items():
        concept = content.get(element)
        if not isinstance(concept, dict):
            continue
        codings = concept.get("coding")
        for index, coding in enumerate(codings if isinstance(codings, list) else []):
            if (
                isinstance(coding, dict)
                and coding.get("system") == system
                and coding.get("code") not in codes
            ):
                expression = f"{resource_type}.{element}.coding[{index}].code"
                issues.append(
                    _invalid(f"{expression} '{coding.get('code')}' is not in {system}", expression)
                )
    narrative = content.get("text")
    if isinstance(narrative, dict) and narrative.get("status") not in NARRATIVE_STATUS:
        issues.append(
            _invalid(
                f"{resource_type}.text.status must be one of: {', '.join(NARRATIVE_STATUS)}",
                f"{resource_type}.text.status",
            )
        )
    return issues


def text_storable(text: str) -> bool:
    """Whether PostgreSQL can hold `text`: neither jsonb nor a text column takes NUL
    (U+0000), escaped or not. Resources and search values are both checked with this."""
    return "\x00" not in text


def _walk_issues(resource_type: str, content: dict[str, Any]) -> list[Issue]:
    """What must hold everywhere inside a resource, named by its path: no NUL in a key or
    string, and every resource within (contained, Bundle.entry.resource, ...) of a type
    with a model (the models fail with a crash, not an error, on any other). Iterative:
    the loader's resources have not been through the HTTP parser's depth limit."""
    issues: list[Issue] = []
    stack: list[tuple[Any, str]] = [(content, resource_type)]
    while stack and len(issues) < 20:
        value, path = stack.pop()
        if isinstance(value, str) and not text_storable(value):
            issues.append(_invalid(f"{path} holds a NUL character (U+0000)", path))
        elif isinstance(value, list):
            stack.extend((child, f"{path}[{index}]") for index, child in enumerate(value))
        elif isinstance(value, dict):
            inner = value.get("resourceType")
            known = isinstance(inner, str) and inner in _MODEL_TYPES
            if value is not content and "resourceType" in value and not known:
                issues.append(
                    _invalid(
                        f"{path}.resourceType '{str(inner)[:64]}' is not an R4 resource type "
                        "this server can validate inside another resource",
                        f"{path}.resourceType",
                    )
                )
            for key, child in value.items():
                if not text_storable(key):
                    issues.append(_invalid(f"{path}.{key} is named with a NUL", f"{path}.{key}"))
                stack.append((child, f"{path}.{key}"))
    return issues


def _contained_issues(resource_type: str, content: dict[str, Any]) -> list[Issue]:
    # A contained resource is only reachable as "#id", and FHIR forbids nesting (dom-2);
    # the R4B models accept both omissions.
    contained = content.get("contained")
    issues = []
    for index, item in enumerate(contained if isinstance(contained, list) else []):
        path = f"{resource_type}.contained[{index}]"
        if not isinstance(item, dict):
            continue
        if not item.get("id"):
            issues.append(
                _invalid(
                    f"{path}.id: a contained resource needs an id", f"{path}.id", IssueCode.REQUIRED
                )
            )
        if "contained" in item:
            issues.append(
                _invalid(
                    f"{path}.contained: a contained resource cannot contain resources",
                    f"{path}.contained",
                    IssueCode.STRUCTURE,
                )
            )
    return issues


def _reference_issues(resource_type: str, content: Any, path: str) -> list[Issue]:
    """Every Reference.reference is relative (Type/id, of an R4 type), an absolute http(s)
    URL, a contained '#id', or a URN (urn:uuid:, urn:oid:, ...)."""
    issues: list[Issue] = []
    if isinstance(content, dict):
        for key, value in content.items():
            child = f"{path}.{key}"
            if key == "reference" and isinstance(value, str):
                issue = _reference_issue(value, child)
                if issue:
                    issues.append(issue)
            elif key != "contained" or path != resource_type:
                issues.extend(_reference_issues(resource_type, value, child))
            else:
                for index, item in enumerate(value if isinstance(value, list) else []):
                    inner = item.get("resourceType", "Resource") if isinstance(item, dict) else ""
                    issues.extend(_reference_issues(inner, item, f"{child}[{index}]"))
    elif isinstance(content, list):
        for index, item in enumerate(content):
            issues.extend(_reference_issues(resource_type, item, f"{path}[{index}]"))
    return issues


def _reference_issue(value: str, expression: str) -> Issue | None:
    if (value.startswith("#") and len(value) > 1) or _URN_REFERENCE.match(value):
        return None
    if _ABSOLUTE_URL.match(value):
        return None
    match = RELATIVE_REFERENCE.fullmatch(value)
    if match and match["type"] in R4_RESOURCE_TYPES:
        return None
    return _invalid(
        f"{expression} '{value[:100]}' is not a reference of the form Type/id, an absolute "
        "URL, '#contained-id' or a URN (urn:uuid:, urn:oid:)",
        expression,
    )


def resource_validate(
    *, content: Any, resource_type: str, logical_id: str | None = None, require_id: bool = False
) -> None:
    """Raise FhirError (400 for the wrong shape, 422 for invalid content) or return.

    `logical_id` is the id in the URL: a body id must agree with it (update), and
    `require_id` makes the body id mandatory (update, as FHIR requires).
    """
    if not isinstance(content, dict):
        raise FhirError(400, IssueCode.STRUCTURE, "The body must be a JSON object (a resource)")
    body_type = content.get("resourceType")
    if body_type != resource_type:
        raise FhirError(
            400,
            IssueCode.INVALID,
            f"resourceType '{body_type}' does not match the type '{resource_type}' of the URL",
            expression=[f"{resource_type}.resourceType"],
        )
    body_id = content.get("id")
    if require_id and body_id is None:
        raise FhirError(
            400,
            IssueCode.REQUIRED,
            "An update must carry the resource id",
            expression=[f"{resource_type}.id"],
        )
    if logical_id is not None and body_id is not None and body_id != logical_id:
        raise FhirError(
            400,
            IssueCode.INVALID,
            f"Body id '{body_id}' does not match the URL id '{logical_id}'",
            expression=[f"{resource_type}.id"],
        )
    if body_id is not None and not (isinstance(body_id, str) and id_valid(body_id)):
        raise FhirError(
            400,
            IssueCode.VALUE,
            "id must be 1-64 of A-Z a-z 0-9 - .",
            expression=[f"{resource_type}.id"],
        )
    issues = _walk_issues(resource_type, content) + _contained_issues(resource_type, content)
    if not issues:  # only then the models: an unknown inner resourceType crashes them
        if resource_type in STRUCTURAL_TYPES:
            issues = _r4_only_issues(resource_type, content)
        else:
            issues = _model_issues(resource_type, content)
    issues += _binding_issues(resource_type, content)
    issues += _reference_issues(resource_type, content, resource_type)
    if issues:
        raise FhirError(422, IssueCode.PROCESSING, issues[0].diagnostics, issues=issues)
