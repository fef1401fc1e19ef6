"""Parsing of a search request: query parameters in, a validated SearchRequest out.

Control parameters (_count, _sort, _include, ...) are checked here; each criterion is
matched to its SearchParameter from the registry. Every bad value is a 400 naming the
parameter; unknown parameters fail in strict handling and are reported otherwise.
"""

import re
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import parse_qsl, urlencode

from fhirplatform.errors import FhirError, Issue, IssueCode
from fhirplatform.fhir.models import id_valid
from fhirplatform.fhir.paging import CURSOR_PARAM, DEFAULT_COUNT, count_parse
from fhirplatform.fhir.search.query import Chain, Criterion, Modifier, split_values
from fhirplatform.fhir.search.registry import Column, ParamType, SearchParameter, search_parameter
from fhirplatform.fhir.search.values import text_normalise
from fhirplatform.fhir.validation import NOT_STORED_DETAIL, text_storable
from fhirplatform.resource_types import NOT_STORED, R4_RESOURCE_TYPES

# Parameters that shape the result rather than filter it; _format/_pretty are the renderer's.
IGNORED_CONTROL = {"_format", "_pretty"}
_ELEMENT = re.compile(r"^[a-z][A-Za-z0-9]*$")


class Control(StrEnum):
    COUNT = "_count"
    SORT = "_sort"
    SUMMARY = "_summary"
    ELEMENTS = "_elements"
    INCLUDE = "_include"
    REVINCLUDE = "_revinclude"
    TYPE = "_type"
    TOTAL = "_total"


@dataclass(frozen=True)
class SortKey:
    """What rows are ordered by: a resource column or the min/max indexed value of a parameter."""

    name: str  # as written in _sort, without `-`
    descending: bool
    kind: str  # "pk", "id", "lastUpdated", or a ParamType


@dataclass
class SearchRequest:
    resource_types: list[str]
    system_level: bool
    criteria: list[tuple[Criterion, SearchParameter | None]] = field(default_factory=list)
    chains: list[Chain] = field(default_factory=list)
    count: int = DEFAULT_COUNT
    sort: SortKey = field(default_factory=lambda: SortKey("_pk", False, "pk"))
    summary_count: bool = False
    summary_data: bool = False
    elements: list[str] = field(default_factory=list)
    includes: list[tuple[str, str, str | None]] = field(default_factory=list)
    revincludes: list[tuple[str, str, str | None]] = field(default_factory=list)
    total_accurate: bool = False
    cursor: str | None = None
    used: list[tuple[str, str]] = field(default_factory=list)  # canonical, for links
    unknown: list[str] = field(default_factory=list)
    # The filtering parameters alone, each in one spelling (see criteria_canonical).
    filters: list[tuple[str, str]] = field(default_factory=list)


def _invalid(name: str, diagnostics: str, code: IssueCode = IssueCode.INVALID) -> FhirError:
    return FhirError(400, code, f"Search parameter '{name}': {diagnostics}", expression=[name])


def _parameter_for(types: list[str], name: str) -> SearchParameter | None:
    """The parameter `name` on every type searched (system search needs it on all)."""
    found = [search_parameter(t, name) for t in types]
    if not found or any(p is None for p in found):
        return None
    first = found[0]
    assert first is not None
    return first if all(p is not None and p.type == first.type for p in found) else None


def _parse_include(
    name: str, value: str, types: list[str], reverse: bool
) -> tuple[str, str, str | None]:
    parts = value.split(":")
    if parts[-1] == "iterate":
        raise _invalid(name, "':iterate' is not supported", IssueCode.NOT_SUPPORTED)
    if len(parts) not in (2, 3):
        raise _invalid(name, f"'{value}' must be Type:parameter[:TargetType]")
    source, param_name = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    if source not in R4_RESOURCE_TYPES or (target and target not in R4_RESOURCE_TYPES):
        raise _invalid(name, f"'{value}' names an unknown resource type")
    if not reverse and source not in types:
        raise _invalid(name, f"'{value}' does not start with the searched type")
    parameter = search_parameter(source, param_name)
    if parameter is None or parameter.type is not ParamType.REFERENCE:
        raise _invalid(name, f"'{param_name}' is not a reference parameter of {source}")
    return source, param_name, target


def _parse_sort(value: str, types: list[str]) -> SortKey:
    keys = [key for key in value.split(",") if key]
    if len(keys) != 1:
        raise _invalid("_sort", "exactly one sort key is supported", IssueCode.NOT_SUPPORTED)
    key = keys[0]
    descending = key.startswith("-")
    name = key.lstrip("-")
    if name == Column.ID:
        return SortKey(name, descending, "id")
    if name == Column.LAST_UPDATED:
        return SortKey(name, descending, "lastUpdated")
    parameter = _parameter_for(types, name)
    if parameter is None:
        raise _invalid("_sort", f"'{name}' is not a search parameter of {', '.join(types)}")
    if parameter.type not in (
        ParamType.DATE,
        ParamType.STRING,
        ParamType.TOKEN,
        ParamType.NUMBER,
        ParamType.QUANTITY,
        ParamType.URI,
    ):
        raise _invalid(
            "_sort", f"cannot sort by {parameter.type} parameter '{name}'", IssueCode.NOT_SUPPORTED
        )
    return SortKey(name, descending, str(parameter.type))


def _search_types(
    resource_type: str | None, params: list[tuple[str, str]]
) -> tuple[list[str], bool]:
    if resource_type is not None:
        return [resource_type], False
    type_values = [value for name, value in params if name == Control.TYPE]
    types = sorted({t for value in type_values for t in value.split(",") if t})
    unknown = [t for t in types if t not in R4_RESOURCE_TYPES]
    if unknown:
        raise _invalid("_type", f"unknown resource type(s) {', '.join(unknown)}")
    if NOT_STORED.intersection(types):
        raise _invalid("_type", NOT_STORED_DETAIL, IssueCode.NOT_SUPPORTED)
    return types, True


def search_parse(
    *, resource_type: str | None, params: list[tuple[str, str]], strict: bool
) -> SearchRequest:
    """Validate and normalise the query. Unknown parameters fail in strict handling and
    are dropped (and reported) otherwise; bad values always fail."""
    types, system_level = _search_types(resource_type, params)
    request = SearchRequest(resource_types=types, system_level=system_level)
    searchable = types or ["Resource"]
    if system_level and types:
        request.used.append((Control.TYPE, ",".join(types)))
    for name, value in params:
        if not (text_storable(name) and text_storable(value)):
            raise _invalid(name, "holds a NUL character (U+0000)", IssueCode.VALUE)
        if name in IGNORED_CONTROL or name == Control.TYPE:
            continue
        if name == CURSOR_PARAM:
            request.cursor = value
        elif name == Control.COUNT:
            request.count = count_parse(value)
        elif name == Control.SORT:
            request.sort = _parse_sort(value, searchable)
            request.used.append((name, value))
        elif name == Control.SUMMARY:
            if value == "count":
                request.summary_count = True
            elif value == "data":
                request.summary_data = True
            elif value != "false":
                raise _invalid(
                    name,
                    f"'{value}' is not supported (count, data or false)",
                    IssueCode.NOT_SUPPORTED,
                )
            request.used.append((name, value))
        elif name == Control.ELEMENTS:
            elements = [e.strip() for e in value.split(",") if e.strip()]
            bad = [e for e in elements if not _ELEMENT.match(e)]
            if bad:
                raise _invalid(name, f"not element names: {', '.join(bad)}")
            request.elements.extend(elements)
            request.used.append((name, ",".join(elements)))
        elif name in (Control.INCLUDE, Control.REVINCLUDE):
            reverse = name == Control.REVINCLUDE
            spec = _parse_include(name, value, searchable, reverse)
            (request.revincludes if reverse else request.includes).append(spec)
            request.used.append((name, value))
        elif name == Control.TOTAL:
            if value not in ("none", "estimate", "accurate"):
                raise _invalid(name, f"'{value}' is not none, estimate or accurate")
            request.total_accurate = value == "accurate"
            request.used.append((name, value))
        else:
            _parse_criterion(request, name, value, searchable, strict=strict)
    if request.unknown and strict:
        raise FhirError(
            400,
            IssueCode.NOT_SUPPORTED,
            f"Unknown search parameter(s): {', '.join(request.unknown)}",
            issues=[
                Issue(
                    code=IssueCode.NOT_SUPPORTED,
                    diagnostics=f"Unknown search parameter '{n}'",
                    expression=[n],
                )
                for n in request.unknown
            ],
        )
    request.used.append((Control.COUNT, str(request.count)))
    return request


def _parse_criterion(
    request: SearchRequest, name: str, value: str, types: list[str], *, strict: bool
) -> None:
    code, _, modifier = name.partition(":")
    criterion = Criterion(code, modifier or None, split_values(value))
    if code == Column.ID and strict:
        # Lenient handling lets a value no id can have match nothing (query.column_filter).
        for bad in (v for v in criterion.values if not id_valid(v)):
            raise _invalid(name, f"'{bad[:100]}' is not a resource id", IssueCode.VALUE)
    if code in (Column.ID, Column.LAST_UPDATED):
        request.criteria.append((criterion, None))
        request.used.append((name, value))
        request.filters.append((name, _filter_values(criterion, None)))
        return
    if "." in name:
        chain = _parse_chain(name, split_values(value), types)
        if chain is None:
            request.unknown.append(name)
        else:
            request.chains.append(chain)
            request.used.append((name, value))
            request.filters.append((name, _filter_values(chain.criterion, chain.parameter)))
        return
    parameter = _parameter_for(types, code)
    if parameter is None:
        request.unknown.append(name)
        return
    request.criteria.append((criterion, parameter))
    request.used.append((name, value))
    request.filters.append((name, _filter_values(criterion, parameter)))


def _filter_values(criterion: Criterion, parameter: SearchParameter | None) -> str:
    """A criterion's OR-values in one spelling: deduplicated and sorted, and string values
    folded as string search folds them (`Müller` and `muller` find the same resources)."""
    values = set(criterion.values)
    folded = parameter is not None and parameter.type is ParamType.STRING
    if folded and criterion.modifier != Modifier.EXACT:
        values = {text_normalise(value) for value in values}
    return ",".join(value.replace(",", "\\,") for value in sorted(values))


def criteria_canonical(*, resource_type: str, query: object) -> str:
    """Conditional-create criteria (If-None-Exist) in one canonical spelling.

    Equivalent criteria must lock and match alike, or two spellings of one condition
    create two resources: the query is percent-decoded, parsed by the search parser
    (unknown parameters and bad values are a 400, as in strict search), its result
    parameters (_count, _sort, _summary, _elements, _include, ...) and empty parameters
    dropped, and the filters left are sorted, values included. The result is a query
    string again, which is what the store locks on and the search matches with.
    """
    if not isinstance(query, str):
        raise FhirError(400, IssueCode.INVALID, "If-None-Exist criteria must be a query string")
    decoded = parse_qsl(query.strip().lstrip("?"), keep_blank_values=True)
    params = [(name, value) for name, value in decoded if name and value]
    request = search_parse(resource_type=resource_type, params=params, strict=True)
    if not request.filters:
        raise FhirError(400, IssueCode.INVALID, "If-None-Exist needs search criteria")
    return urlencode(sorted(set(request.filters)))


def _parse_chain(name: str, values: tuple[str, ...], types: list[str]) -> Chain | None:
    """`reference[:Type].parameter[:modifier]`; None when any part is not a parameter."""
    head, _, tail = name.partition(".")
    reference_name, _, target_type = head.partition(":")
    chained_name, _, modifier = tail.partition(":")
    reference = _parameter_for(types, reference_name)
    if reference is None or reference.type is not ParamType.REFERENCE or "." in tail:
        return None
    candidates = [target_type] if target_type else list(reference.targets)
    if target_type and reference.targets and target_type not in reference.targets:
        return None
    found = [(t, search_parameter(t, chained_name)) for t in candidates]
    usable = [(t, p) for t, p in found if p is not None and p.column is None]
    if not usable:
        return None
    first = usable[0][1]
    targets = tuple(t for t, p in usable if p.type == first.type)
    return Chain(reference, targets, first, Criterion(chained_name, modifier or None, values))
