"""Evaluate search parameter expressions on a resource and turn the results into typed values.

Expressions are compiled once per (type, expression) with fhirpathpy's R4 model (it knows
the choice types, so `Observation.effective` finds `effectiveDateTime`). Before
evaluating, a parameter whose expression reads a top-level element the resource does
not have is skipped: that is most of them, and it is the bulk of the indexing cost.
"""

import logging
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any

import fhirpathpy
from fhirpathpy.models import models as fhirpath_models

from fhirplatform.fhir.search.registry import (
    BASE_TYPE,
    ParamType,
    SearchParameter,
    SearchPath,
    indexed_parameters_for,
)

logger = logging.getLogger(__name__)
MIN_INSTANT = datetime(1, 1, 1, tzinfo=UTC)
MAX_INSTANT = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
MAX_TEXT = 255
_STEM = re.compile(r"^([a-z][a-z0-9]*)[A-Z]")
_DATE = re.compile(
    r"^(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?P<fraction>\.\d+)?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
# A relative reference `Type/id`, optionally versioned; absolute URLs are kept as urls.
_RELATIVE_REFERENCE = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


@dataclass(frozen=True)
class TokenValue:
    system: str
    code: str
    text: str


@dataclass(frozen=True)
class StringValue:
    value: str
    exact: str


@dataclass(frozen=True)
class DateValue:
    low: datetime
    high: datetime


@dataclass(frozen=True)
class ReferenceValue:
    target_type: str
    target_id: str
    url: str


@dataclass(frozen=True)
class NumberValue:
    value: Decimal


@dataclass(frozen=True)
class QuantityValue:
    value: Decimal
    system: str
    code: str


@dataclass(frozen=True)
class UriValue:
    uri: str


Value = (
    TokenValue | StringValue | DateValue | ReferenceValue | NumberValue | QuantityValue | UriValue
)


def text_normalise(value: str) -> str:
    """Case- and accent-insensitive form used by string search (`Müller` → `muller`)."""
    decomposed = unicodedata.normalize("NFKD", value)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()[:MAX_TEXT]


def date_range(text: str) -> DateValue | None:
    """A FHIR date, dateTime or instant as the half-open range it stands for:
    `2020-03` is [2020-03-01, 2020-04-01). Values without a zone are read as UTC."""
    match = _DATE.match(text.strip())
    if not match:
        return None
    parts = match.groupdict()
    try:
        year = int(parts["year"])
        if parts["month"] is None:
            low = datetime(year, 1, 1, tzinfo=UTC)
            return DateValue(
                low, datetime(year + 1, 1, 1, tzinfo=UTC) if year < 9999 else MAX_INSTANT
            )
        month = int(parts["month"])
        if parts["day"] is None:
            low = datetime(year, month, 1, tzinfo=UTC)
            high = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
            return DateValue(low, high)
        day = int(parts["day"])
        if parts["hour"] is None:
            low = datetime(year, month, day, tzinfo=UTC)
            return DateValue(low, low + timedelta(days=1))
        zone: timezone = UTC
        if parts["tz"] and parts["tz"] != "Z":
            sign = 1 if parts["tz"][0] == "+" else -1
            hours, minutes = parts["tz"][1:].split(":")
            zone = timezone(sign * timedelta(hours=int(hours), minutes=int(minutes)))
        fraction = parts["fraction"] or ""
        micro = int((fraction[1:] + "000000")[:6]) if fraction else 0
        low = datetime(
            year,
            month,
            day,
            int(parts["hour"]),
            int(parts["minute"]),
            int(parts["second"] or 0),
            micro,
            tzinfo=zone,
        ).astimezone(UTC)
        if parts["second"] is None:
            step = timedelta(minutes=1)
        elif fraction:
            step = timedelta(microseconds=10 ** max(0, 6 - (len(fraction) - 1)))
        else:
            step = timedelta(seconds=1)
        return DateValue(low, low + step)
    except (ValueError, OverflowError):
        return None


def decimal_value(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return number if number.is_finite() and abs(number) < Decimal(10) ** 25 else None


def reference_parse(reference: str) -> ReferenceValue | None:
    if not reference or reference.startswith("#"):
        return None
    match = _RELATIVE_REFERENCE.match(reference)
    if match:
        return ReferenceValue(match.group(1), match.group(2), "")
    return ReferenceValue("", "", reference[:MAX_TEXT])


def _clip(text: Any) -> str:
    return str(text)[:MAX_TEXT]


def _tokens(value: Any) -> Iterator[TokenValue]:
    if isinstance(value, bool):
        yield TokenValue("", "true" if value else "false", "")
    elif isinstance(value, str | int | Decimal):
        yield TokenValue("", _clip(value), "")
    elif isinstance(value, dict):
        if "coding" in value or ("text" in value and "value" not in value):
            text = text_normalise(value.get("text", ""))
            codings = value.get("coding") or []
            for coding in codings:
                if coding.get("code"):
                    display = text or text_normalise(coding.get("display", ""))
                    yield TokenValue(
                        _clip(coding.get("system", "")), _clip(coding["code"]), display
                    )
            if not codings and text:
                yield TokenValue("", "", text)
        elif "code" in value:  # Coding, Quantity-as-token
            yield TokenValue(
                _clip(value.get("system", "")),
                _clip(value["code"]),
                text_normalise(value.get("display", "")),
            )
        elif "value" in value:  # Identifier, ContactPoint
            type_text = (
                (value.get("type") or {}).get("text", "")
                if isinstance(value.get("type"), dict)
                else ""
            )
            yield TokenValue(
                _clip(value.get("system", "")), _clip(value["value"]), text_normalise(type_text)
            )


_STRING_PARTS = (
    "text",
    "family",
    "given",
    "prefix",
    "suffix",
    "line",
    "city",
    "district",
    "state",
    "postalCode",
    "country",
    "value",
    "display",
    "title",
    "name",
)


def _strings(value: Any) -> Iterator[StringValue]:
    if isinstance(value, str):
        if value:
            yield StringValue(text_normalise(value), _clip(value))
    elif isinstance(value, dict):  # HumanName, Address, and other string-bearing types
        for key in _STRING_PARTS:
            part = value.get(key)
            for item in part if isinstance(part, list) else [part]:
                if isinstance(item, str) and item:
                    yield StringValue(text_normalise(item), _clip(item))


def _dates(value: Any) -> Iterator[DateValue]:
    if isinstance(value, str):
        parsed = date_range(value)
        if parsed:
            yield parsed
    elif isinstance(value, dict):
        if "start" in value or "end" in value:  # Period
            start = date_range(value["start"]) if "start" in value else None
            end = date_range(value["end"]) if "end" in value else None
            yield DateValue(start.low if start else MIN_INSTANT, end.high if end else MAX_INSTANT)
        for event in value.get("event", []):  # Timing
            parsed = date_range(event)
            if parsed:
                yield parsed
    elif value is not None and not isinstance(value, bool | int | Decimal):
        parsed = date_range(str(value))  # fhirpathpy date objects
        if parsed:
            yield parsed


def _references(value: Any, resolve_type: str | None) -> Iterator[ReferenceValue]:
    parsed: ReferenceValue | None = None
    if isinstance(value, str):
        parsed = reference_parse(value)
    elif isinstance(value, dict):
        if isinstance(value.get("reference"), str):
            parsed = reference_parse(value["reference"])
        elif "resourceType" in value and "id" in value:  # an embedded resource
            parsed = ReferenceValue(value["resourceType"], _clip(value["id"]), "")
    if parsed and (resolve_type is None or parsed.target_type == resolve_type):
        yield parsed


def _numbers(value: Any) -> Iterator[NumberValue]:
    number = decimal_value(value.get("value") if isinstance(value, dict) else value)
    if number is not None:
        yield NumberValue(number)


def _quantities(value: Any) -> Iterator[QuantityValue]:
    if not isinstance(value, dict):
        return
    number = decimal_value(value.get("value"))
    if number is None:
        return
    if "currency" in value:  # Money
        yield QuantityValue(number, "urn:iso:std:iso:4217", _clip(value["currency"]))
    else:
        yield QuantityValue(
            number,
            _clip(value.get("system", "")),
            _clip(value.get("code") or value.get("unit", "")),
        )


def _uris(value: Any) -> Iterator[UriValue]:
    if isinstance(value, str) and value:
        yield UriValue(value[:512])


_CONVERTERS: dict[ParamType, Callable[[Any], Iterator[Value]]] = {
    ParamType.TOKEN: _tokens,
    ParamType.STRING: _strings,
    ParamType.DATE: _dates,
    ParamType.NUMBER: _numbers,
    ParamType.QUANTITY: _quantities,
    ParamType.URI: _uris,
}


@cache
def _compiled(resource_type: str, expression: str) -> Callable[..., list[Any]]:
    # fhirpathpy does not treat a concrete type as `Resource`; name the type instead.
    if expression.startswith(f"{BASE_TYPE}."):
        expression = resource_type + expression[len(BASE_TYPE) :]
    return fhirpathpy.compile(expression, fhirpath_models["r4"])


_SIMPLE_PATH = re.compile(r"^([A-Z][A-Za-z]+)((?:\.[a-z][A-Za-z0-9]*)+)$")
_SIMPLE_CAST = re.compile(r"^\(([A-Z][A-Za-z]+)\.([a-z][A-Za-z0-9]*) as ([A-Za-z]+)\)$")


# Suffixes of choice-type elements (`value[x]` → `valueQuantity`): the FHIR data types.
CHOICE_SUFFIXES = frozenset(
    [
        "Boolean",
        "Integer",
        "String",
        "Decimal",
        "Uri",
        "Url",
        "Canonical",
        "Base64Binary",
        "Instant",
        "Date",
        "DateTime",
        "Time",
        "Code",
        "Oid",
        "Id",
        "Markdown",
        "UnsignedInt",
        "PositiveInt",
        "Uuid",
        "Address",
        "Age",
        "Annotation",
        "Attachment",
        "CodeableConcept",
        "Coding",
        "ContactPoint",
        "Count",
        "Distance",
        "Duration",
        "HumanName",
        "Identifier",
        "Money",
        "Period",
        "Quantity",
        "Range",
        "Ratio",
        "Reference",
        "SampledData",
        "Signature",
        "Timing",
        "ContactDetail",
        "Contributor",
        "DataRequirement",
        "Expression",
        "ParameterDefinition",
        "RelatedArtifact",
        "TriggerDefinition",
        "UsageContext",
        "Dosage",
        "Meta",
    ]
)


def _choice(item: dict[str, Any], name: str) -> Any:
    for key, value in item.items():
        if key.startswith(name) and key[len(name) :] in CHOICE_SUFFIXES:
            return value
    return None


def _children(items: list[Any], name: str) -> list[Any]:
    """One FHIRPath navigation step over JSON: lists flatten, choice types match by stem."""
    out: list[Any] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        child = item.get(name)
        if child is None:
            child = _choice(item, name)
        if child is None:
            continue
        out.extend(child if isinstance(child, list) else [child])
    return out


def _direct(resource_type: str, expression: str) -> Callable[[dict[str, Any]], list[Any]] | None:
    """Plain navigation (`Patient.name.given`, `(Observation.value as Quantity)`) evaluated
    on the JSON directly: the same result as fhirpathpy at a fraction of the cost. Most
    registry expressions have this shape; anything else goes to fhirpathpy."""
    if expression.startswith(f"{BASE_TYPE}."):
        expression = resource_type + expression[len(BASE_TYPE) :]
    cast = _SIMPLE_CAST.match(expression)
    if cast and cast.group(1) == resource_type:
        key = cast.group(2) + cast.group(3)[0].upper() + cast.group(3)[1:]

        def evaluate_cast(content: dict[str, Any]) -> list[Any]:
            value = content.get(key)
            return [] if value is None else value if isinstance(value, list) else [value]

        return evaluate_cast
    simple = _SIMPLE_PATH.match(expression)
    if simple and simple.group(1) == resource_type:
        steps = simple.group(2).split(".")[1:]

        def evaluate_path(content: dict[str, Any]) -> list[Any]:
            items: list[Any] = [content]
            for step in steps:
                items = _children(items, step)
            return items

        return evaluate_path
    return None


@dataclass(frozen=True)
class _Step:
    parameter: SearchParameter
    path: SearchPath
    required_key: str | None  # `(X.value as Quantity)` needs `valueQuantity`
    evaluate: Callable[[dict[str, Any]], list[Any]]


@cache
def _plan(resource_type: str) -> tuple[_Step, ...]:
    steps = []
    for parameter in indexed_parameters_for(resource_type):
        for path in parameter.paths:
            cast = _SIMPLE_CAST.match(path.expression)
            required = None
            if cast:
                required = cast.group(2) + cast.group(3)[0].upper() + cast.group(3)[1:]
            evaluate = _direct(resource_type, path.expression) or _compiled(
                resource_type, path.expression
            )
            steps.append(_Step(parameter, path, required, evaluate))
    return tuple(steps)


def _stems(content: dict[str, Any]) -> set[str]:
    """Top-level element names, with choice-type stems (`valueQuantity` → `value`)."""
    stems = set(content)
    for key in content:
        match = _STEM.match(key)
        if match:
            stems.add(match.group(1))
    return stems


def resource_values(
    *, resource_type: str, content: dict[str, Any]
) -> Iterator[tuple[SearchParameter, Value]]:
    """Every (parameter, value) pair the registry's expressions extract from `content`."""
    stems = _stems(content)
    evaluated: dict[str, list[Any]] = {}
    for step in _plan(resource_type):
        parameter, path = step.parameter, step.path
        if path.root is not None and path.root not in stems:
            continue
        if step.required_key is not None and step.required_key not in content:
            continue
        try:
            # Several parameters share an expression (code / combo-code); evaluate it once.
            results = evaluated.get(path.expression)
            if results is None:
                results = evaluated[path.expression] = step.evaluate(content)
        except Exception:  # an expression the evaluator cannot run indexes nothing
            logger.debug("search expression failed: %s", path.expression, exc_info=True)
            continue
        seen: set[Value] = set()
        for result in results:
            if parameter.type is ParamType.REFERENCE:
                values: Iterator[Value] = _references(result, path.resolve_type)
            else:
                values = _CONVERTERS[parameter.type](result)
            for value in values:
                if value not in seen:
                    seen.add(value)
                    yield parameter, value
