"""Turn one search parameter (name, modifier, comma-separated values) into a filter on
the resource table, answered from the index tables through EXISTS semi-joins.

Comma-separated values are ORed inside one EXISTS; repeated parameters AND their
EXISTS clauses. Every bad value raises a 400 naming the parameter.
"""

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from django.db.models import Exists, OuterRef, Q

from fhirplatform.errors import FhirError, IssueCode
from fhirplatform.fhir.models import Resource, id_valid
from fhirplatform.fhir.search.models import INDEX_MODEL, ReferenceIndex
from fhirplatform.fhir.search.registry import Column, ParamType, SearchParameter
from fhirplatform.fhir.search.values import (
    MAX_SEARCH_DIGITS,
    date_range,
    instant_shift,
    number_parse,
    reference_parse,
    text_normalise,
)
from fhirplatform.resource_types import TYPE_CHARS


class Prefix(StrEnum):
    EQ = "eq"
    NE = "ne"
    GT = "gt"
    LT = "lt"
    GE = "ge"
    LE = "le"
    SA = "sa"
    EB = "eb"
    AP = "ap"


class Modifier(StrEnum):
    MISSING = "missing"
    EXACT = "exact"
    CONTAINS = "contains"
    TEXT = "text"
    NOT = "not"
    BELOW = "below"


# Modifiers each parameter type accepts besides :missing (reference also takes :Type).
ALLOWED_MODIFIERS: dict[ParamType, set[Modifier]] = {
    ParamType.TOKEN: {Modifier.NOT, Modifier.TEXT},
    ParamType.STRING: {Modifier.EXACT, Modifier.CONTAINS},
    ParamType.DATE: set(),
    ParamType.REFERENCE: set(),
    ParamType.NUMBER: set(),
    ParamType.QUANTITY: set(),
    ParamType.URI: {Modifier.BELOW},
}
_PREFIXED = re.compile(r"^(eq|ne|gt|lt|ge|le|sa|eb|ap)(?=[\d-])")
_RESOURCE_TYPE = re.compile(TYPE_CHARS)


@dataclass(frozen=True)
class Criterion:
    """One parsed `name[:modifier]=v1,v2` from the query."""

    name: str
    modifier: str | None
    values: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.name}:{self.modifier}" if self.modifier else self.name


def bad_value(criterion: Criterion, message: str) -> FhirError:
    return FhirError(
        400,
        IssueCode.VALUE,
        f"Search parameter '{criterion.key}': {message}",
        expression=[criterion.key],
    )


def split_values(raw: str) -> tuple[str, ...]:
    """Comma separates OR values; `\\,` is a literal comma."""
    parts = re.split(r"(?<!\\),", raw)
    return tuple(part.replace("\\,", ",") for part in parts)


def _prefixed(criterion: Criterion, value: str) -> tuple[Prefix, str]:
    match = _PREFIXED.match(value)
    if match:
        return Prefix(match.group(1)), value[2:]
    if value[:2].isalpha():
        raise bad_value(criterion, f"unknown prefix '{value[:2]}' in '{value}'")
    return Prefix.EQ, value


def _date_bounds(criterion: Criterion, text: str) -> tuple[datetime, datetime]:
    parsed = date_range(text)
    if parsed is None:
        raise bad_value(criterion, f"'{text}' is not a FHIR date, dateTime or instant")
    return parsed.low, parsed.high


def range_q(prefix: Prefix, low: datetime, high: datetime, lo: str, hi: str) -> Q:
    """Compare the stored range [lo, hi) with the searched range [low, high) as FHIR's
    date search defines it: eq means contained, ge/le mean overlapping or beyond."""
    contained = Q(**{f"{lo}__gte": low, f"{hi}__lte": high})
    match prefix:
        case Prefix.EQ:
            return contained
        case Prefix.NE:
            return ~contained
        case Prefix.GT:
            return Q(**{f"{hi}__gt": high})
        case Prefix.LT:
            return Q(**{f"{lo}__lt": low})
        case Prefix.GE:
            return Q(**{f"{hi}__gt": low})
        case Prefix.LE:
            return Q(**{f"{lo}__lt": high})
        case Prefix.SA:
            return Q(**{f"{lo}__gte": high})
        case Prefix.EB:
            return Q(**{f"{hi}__lte": low})
        case Prefix.AP:
            slack = max((high - low) / 10, timedelta(days=1))
            low, high = instant_shift(low, -slack), instant_shift(high, slack)
            return Q(**{f"{lo}__lt": high, f"{hi}__gt": low})


def instant_q(prefix: Prefix, low: datetime, high: datetime, field: str) -> Q:
    """A stored instant t against the searched range [low, high)."""
    within = Q(**{f"{field}__gte": low, f"{field}__lt": high})
    match prefix:
        case Prefix.EQ:
            return within
        case Prefix.NE:
            return ~within
        case Prefix.GT | Prefix.SA:
            return Q(**{f"{field}__gte": high})
        case Prefix.LT | Prefix.EB:
            return Q(**{f"{field}__lt": low})
        case Prefix.GE:
            return Q(**{f"{field}__gte": low})
        case Prefix.LE:
            return Q(**{f"{field}__lt": high})
        case Prefix.AP:
            slack = max((high - low) / 10, timedelta(days=1))
            low, high = instant_shift(low, -slack), instant_shift(high, slack)
            return Q(**{f"{field}__gte": low, f"{field}__lt": high})


def _decimal(criterion: Criterion, text: str) -> Decimal:
    number = number_parse(text)
    if number is None:
        raise bad_value(
            criterion, f"'{text}' is not a number of at most {MAX_SEARCH_DIGITS} digits"
        )
    return number


def number_q(prefix: Prefix, number: Decimal, field: str) -> Q:
    """`eq100` means the value rounds to 100 at the precision given: [99.5, 100.5)."""
    exponent = number.as_tuple().exponent
    half = Decimal(5).scaleb((exponent if isinstance(exponent, int) else 0) - 1)
    low, high = number - half, number + half
    match prefix:
        case Prefix.EQ:
            return Q(**{f"{field}__gte": low, f"{field}__lt": high})
        case Prefix.NE:
            return ~Q(**{f"{field}__gte": low, f"{field}__lt": high})
        case Prefix.GT | Prefix.SA:
            return Q(**{f"{field}__gt": number})
        case Prefix.LT | Prefix.EB:
            return Q(**{f"{field}__lt": number})
        case Prefix.GE:
            return Q(**{f"{field}__gte": number})
        case Prefix.LE:
            return Q(**{f"{field}__lte": number})
        case Prefix.AP:
            slack = abs(number) / 10
            return Q(**{f"{field}__gte": number - slack, f"{field}__lte": number + slack})


def _token_q(criterion: Criterion, value: str) -> Q:
    if criterion.modifier == Modifier.TEXT:
        return Q(text__startswith=text_normalise(value))
    if "|" in value:
        system, code = value.split("|", 1)
        if not system and not code:
            raise bad_value(criterion, "'|' needs a system or a code")
        q = Q(system=system)
        return q & Q(code=code) if code else q
    return Q(code=value)


def _string_q(criterion: Criterion, value: str) -> Q:
    if criterion.modifier == Modifier.EXACT:
        return Q(exact=value)
    if criterion.modifier == Modifier.CONTAINS:
        return Q(value__contains=text_normalise(value))
    return Q(value__startswith=text_normalise(value))


def _reference_q(parameter: SearchParameter, criterion: Criterion, value: str, base_url: str) -> Q:
    target_type = criterion.modifier  # `subject:Patient=123`
    if value.startswith(base_url + "/"):
        value = value[len(base_url) + 1 :]
    parsed = reference_parse(value)
    if parsed is None:
        raise bad_value(criterion, f"'{value}' is not a reference")
    if parsed.url:
        if "/" not in value and ":" not in value:  # a bare id
            if not id_valid(value):
                raise bad_value(criterion, f"'{value}' is not a resource id")
            types = [target_type] if target_type else list(parameter.targets)
            q = Q(target_id=value)
            return q & Q(target_type__in=types) if types else q
        if ":" not in value:  # neither Type/id nor an absolute URL or URN
            raise bad_value(criterion, f"'{value}' is not a Type/id reference or a URL")
        return Q(url=parsed.url)
    if target_type and parsed.target_type != target_type:
        raise bad_value(criterion, f"'{value}' is not a {target_type} reference")
    return Q(target_type=parsed.target_type, target_id=parsed.target_id)


def _quantity_q(criterion: Criterion, value: str) -> Q:
    prefix, rest = _prefixed(criterion, value)
    number_text, _, unit = rest.partition("|")
    q = number_q(prefix, _decimal(criterion, number_text), "value")
    if unit:
        system, _, code = unit.partition("|")
        if not code:  # `5.4|mg` is not valid; `5.4||mg` is
            raise bad_value(criterion, "use number|system|code (system may be empty)")
        if system:
            q &= Q(system=system)
        q &= Q(code=code)
    return q


def value_q(parameter: SearchParameter, criterion: Criterion, value: str, base_url: str) -> Q:
    """The condition one value puts on an index row of `parameter`."""
    if value == "":
        raise bad_value(criterion, "empty value")
    match parameter.type:
        case ParamType.TOKEN:
            return _token_q(criterion, value)
        case ParamType.STRING:
            return _string_q(criterion, value)
        case ParamType.DATE:
            prefix, text = _prefixed(criterion, value)
            low, high = _date_bounds(criterion, text)
            return range_q(prefix, low, high, "low", "high")
        case ParamType.NUMBER:
            prefix, text = _prefixed(criterion, value)
            return number_q(prefix, _decimal(criterion, text), "value")
        case ParamType.QUANTITY:
            return _quantity_q(criterion, value)
        case ParamType.REFERENCE:
            return _reference_q(parameter, criterion, value, base_url)
        case ParamType.URI:
            if criterion.modifier == Modifier.BELOW:
                return Q(uri__startswith=value)
            return Q(uri=value)


def check_modifier(parameter: SearchParameter, criterion: Criterion) -> None:
    modifier = criterion.modifier
    if modifier is None or modifier == Modifier.MISSING:
        return
    if parameter.type is ParamType.REFERENCE and _RESOURCE_TYPE.fullmatch(modifier):
        if parameter.targets and modifier not in parameter.targets:
            raise bad_value(criterion, f"'{modifier}' is not a target type of this parameter")
        return
    allowed = ALLOWED_MODIFIERS[parameter.type]
    if modifier not in allowed:
        raise FhirError(
            400,
            IssueCode.NOT_SUPPORTED,
            f"Search parameter '{criterion.key}': modifier ':{modifier}' is not supported "
            f"on {parameter.type} parameters",
            expression=[criterion.key],
        )


def _missing(criterion: Criterion) -> bool:
    if len(criterion.values) != 1 or criterion.values[0] not in ("true", "false"):
        raise bad_value(criterion, ":missing takes true or false")
    return criterion.values[0] == "true"


def column_filter(column: Column, criterion: Criterion) -> Q:
    if criterion.modifier is not None:
        raise FhirError(
            400,
            IssueCode.NOT_SUPPORTED,
            f"Search parameter '{criterion.key}' takes no modifier",
            expression=[criterion.key],
        )
    combined = Q()
    for value in criterion.values:
        if column is Column.ID:
            # A value no id can have matches nothing (strict handling refused it already).
            combined |= Q(logical_id=value) if id_valid(value) else Q(pk__in=[])
        else:
            combined |= instant_value_q(criterion, value, "last_updated")
    return combined


def instant_value_q(criterion: Criterion, value: str, field: str) -> Q:
    """One value of a date criterion, prefix included, against a stored instant column."""
    prefix, text = _prefixed(criterion, value)
    low, high = _date_bounds(criterion, text)
    return instant_q(prefix, low, high, field)


def index_filter(
    *,
    parameter: SearchParameter,
    criterion: Criterion,
    resource_types: list[str],
    base_url: str,
) -> Q:
    """The EXISTS (or NOT EXISTS) condition on the resource table for one criterion."""
    check_modifier(parameter, criterion)
    model = INDEX_MODEL[parameter.type]
    rows = model._default_manager.filter(
        resource_id=OuterRef("pk"), resource_type__in=resource_types, param=parameter.name
    )
    if criterion.modifier == Modifier.MISSING:
        return ~Q(Exists(rows)) if _missing(criterion) else Q(Exists(rows))
    combined = Q()
    for value in criterion.values:
        combined |= value_q(parameter, criterion, value, base_url)
    if criterion.modifier == Modifier.NOT:
        return ~Q(Exists(rows.filter(combined)))
    return Q(Exists(rows.filter(combined)))


@dataclass(frozen=True)
class Chain:
    """`subject:Patient.name=x`: a reference parameter, the types it may point at, and the
    parameter searched on those targets (one level of chaining)."""

    reference: SearchParameter
    targets: tuple[str, ...]
    parameter: SearchParameter
    criterion: Criterion  # the chained part: name, modifier and values


def chain_filter(*, chain: Chain, resource_types: list[str], base_url: str) -> Q:
    """EXISTS a reference row pointing at a target that matches the chained criterion."""
    targets = list(chain.targets)
    matching = Resource.objects.filter(resource_type__in=targets, deleted=False).filter(
        index_filter(
            parameter=chain.parameter,
            criterion=chain.criterion,
            resource_types=targets,
            base_url=base_url,
        )
    )
    references = ReferenceIndex.objects.filter(
        resource_id=OuterRef("pk"),
        resource_type__in=resource_types,
        param=chain.reference.name,
        target_type__in=targets,
        target_id__in=matching.values("logical_id"),
    )
    return Q(Exists(references))
