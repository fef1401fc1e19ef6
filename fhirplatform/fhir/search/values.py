"""Typed search index values, and their conversion from FHIR elements.

One value type per parameter type (token, string, date, reference, number, quantity,
uri), each shaped like the columns of its index table. The converters take what a
search expression returned (a primitive or a complex element) and yield the values to
index; the parsers (dates, references, text) are shared with the search side, so a
stored value and a searched one are read the same way.
"""

import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

from fhirplatform.fhir.models import RELATIVE_REFERENCE
from fhirplatform.fhir.search.registry import ParamType

MIN_INSTANT = datetime(1, 1, 1, tzinfo=UTC)
MAX_INSTANT = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
MAX_TEXT = 255
# re.ASCII: FHIR dates are written in ASCII digits; \d alone also matches '١٢٣٤'.
_DATE = re.compile(
    r"^(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?P<fraction>\.\d+)?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$",
    re.ASCII,
)
# A number a search compares: stored numbers are numeric(38,12), and a literal much past
# that (1e999999) is more than PostgreSQL's numeric type, or Decimal's arithmetic, takes.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?")
MAX_SEARCH_DIGITS = 50


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
            if (year, month) == (9999, 12):
                return DateValue(low, MAX_INSTANT)
            high = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
            return DateValue(low, high)
        day = int(parts["day"])
        if parts["hour"] is None:
            low = datetime(year, month, day, tzinfo=UTC)
            return DateValue(low, instant_shift(low, timedelta(days=1)))
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
        return DateValue(low, instant_shift(low, step))
    except (ValueError, OverflowError):
        return None


def instant_parse(text: str) -> datetime | None:
    """An instant a request names (`_since`): a dateTime with its zone, or a date (from
    its start, UTC); None when it is neither or falls outside years 0001-9999 in UTC."""
    match = _DATE.match(text.strip())
    if not match or (match["hour"] is not None and match["tz"] is None):
        return None
    parsed = date_range(text)
    return parsed.low if parsed else None


def instant_shift(value: datetime, delta: timedelta) -> datetime:
    """`value + delta`, held within [MIN_INSTANT, MAX_INSTANT] instead of overflowing (the
    slack of an `ap` search around a date at either end of the calendar)."""
    try:
        return min(max(value + delta, MIN_INSTANT), MAX_INSTANT)
    except OverflowError:
        return MIN_INSTANT if delta < timedelta(0) else MAX_INSTANT


def number_parse(text: str) -> Decimal | None:
    """A search number in ASCII digits (Decimal also takes '١٢'), at most
    MAX_SEARCH_DIGITS digits either side of the point; else None."""
    if not _NUMBER.fullmatch(text):
        return None
    number = Decimal(text)
    exponent = number.as_tuple().exponent
    if not isinstance(exponent, int) or exponent < -MAX_SEARCH_DIGITS:
        return None
    return number if number.is_zero() or abs(number.adjusted()) <= MAX_SEARCH_DIGITS else None


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
    # A relative reference `Type/id`, optionally versioned; anything else is kept as a url.
    match = RELATIVE_REFERENCE.fullmatch(reference)
    if match:
        return ReferenceValue(match["type"], match["id"], "")
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


def reference_values(value: Any, resolve_type: str | None) -> Iterator[ReferenceValue]:
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


VALUE_CONVERTERS: dict[ParamType, Callable[[Any], Iterator[Value]]] = {
    ParamType.TOKEN: _tokens,
    ParamType.STRING: _strings,
    ParamType.DATE: _dates,
    ParamType.NUMBER: _numbers,
    ParamType.QUANTITY: _quantities,
    ParamType.URI: _uris,
}
