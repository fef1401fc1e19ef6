"""FHIR search: query parameters in, a searchset Bundle out.

Filters come from the index tables (query.py). Pages are cut by keyset cursors: a page
link carries the sort key and row id of its edge row, signed together with the tenant,
the client and a digest of the search, so a link replays only for whoever made it and
only for the search it came from. No OFFSET anywhere: page n costs what page 1 costs.
"""

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any
from urllib.parse import urlencode

from django.core import signing
from django.db import models
from django.db.models import Exists, F, OuterRef, Q, QuerySet, Subquery

from fhirplatform.errors import FhirError, Issue, IssueCode, Severity, not_found, operation_outcome
from fhirplatform.fhir.models import Resource
from fhirplatform.fhir.paging import DEFAULT_COUNT, count_parse
from fhirplatform.fhir.search.models import ReferenceIndex
from fhirplatform.fhir.search.query import (
    INDEX_MODEL,
    Chain,
    Criterion,
    chain_filter,
    column_filter,
    index_filter,
    split_values,
)
from fhirplatform.fhir.search.registry import Column, ParamType, SearchParameter, search_parameter
from fhirplatform.resource_types import R4_RESOURCE_TYPES
from tenants.scopes import Interaction, scopes_allow
from tenants.tokens import Caller

MAX_INCLUDED = 1000
CURSOR_SALT = "fhirplatform.search.cursor"
CURSOR_PARAM = "_cursor"
SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
}
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


class Direction(StrEnum):
    NEXT = "next"
    PREVIOUS = "previous"


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
            _parse_criterion(request, name, value, searchable)
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


def _parse_criterion(request: SearchRequest, name: str, value: str, types: list[str]) -> None:
    code, _, modifier = name.partition(":")
    criterion = Criterion(code, modifier or None, split_values(value))
    if code in (Column.ID, Column.LAST_UPDATED):
        request.criteria.append((criterion, None))
        request.used.append((name, value))
        return
    if "." in name:
        chain = _parse_chain(name, split_values(value), types)
        if chain is None:
            request.unknown.append(name)
        else:
            request.chains.append(chain)
            request.used.append((name, value))
        return
    parameter = _parameter_for(types, code)
    if parameter is None:
        request.unknown.append(name)
        return
    request.criteria.append((criterion, parameter))
    request.used.append((name, value))


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


def _base_queryset(request: SearchRequest, base_url: str) -> QuerySet[Resource]:
    queryset = Resource.objects.filter(deleted=False)
    if request.resource_types:
        queryset = queryset.filter(resource_type__in=request.resource_types)
    for criterion, parameter in request.criteria:
        if parameter is None:
            queryset = queryset.filter(column_filter(Column(criterion.name), criterion))
        else:
            types = request.resource_types or sorted(R4_RESOURCE_TYPES)
            queryset = queryset.filter(
                index_filter(
                    parameter=parameter,
                    criterion=criterion,
                    resource_types=types,
                    base_url=base_url,
                )
            )
    for chain in request.chains:
        types = request.resource_types or sorted(R4_RESOURCE_TYPES)
        queryset = queryset.filter(
            chain_filter(chain=chain, resource_types=types, base_url=base_url)
        )
    return queryset


def _sort_expression(request: SearchRequest) -> Any:
    """The resource column a column sort orders by (parameter sorts use the index)."""
    return F({"pk": "pk", "id": "logical_id", "lastUpdated": "last_updated"}[request.sort.kind])


def _sort_column(sort: SortKey) -> tuple[type[models.Model], str]:
    kind = ParamType(sort.kind)
    column = {
        ParamType.DATE: "high" if sort.descending else "low",
        ParamType.STRING: "value",
        ParamType.TOKEN: "code",
        ParamType.URI: "uri",
    }.get(kind, "value")
    return INDEX_MODEL[kind], column


def _value_segment(
    queryset: QuerySet[Resource],
    request: SearchRequest,
    descending: bool,
    after: tuple[Any, int] | None,
    limit: int,
) -> list[tuple[Any, int]]:
    """(sort value, resource pk) of matching resources that have a value, walked in
    index order. A resource is represented by one row: its smallest value for an
    ascending sort, its largest for a descending one (ties broken by row id)."""
    sort = request.sort
    model, column = _sort_column(sort)
    closer = "gt" if sort.descending else "lt"
    better = model._default_manager.filter(
        resource_id=OuterRef("resource_id"), param=sort.name
    ).filter(
        Q(**{f"{column}__{closer}": OuterRef(column)})
        | Q(**{column: OuterRef(column), "pk__lt": OuterRef("pk")})
    )
    rows = model._default_manager.filter(
        resource_type__in=request.resource_types or sorted(R4_RESOURCE_TYPES),
        param=sort.name,
        resource_id__in=queryset.values("pk"),
    ).filter(~Exists(better))
    if after is not None:
        op = "lt" if descending else "gt"
        rows = rows.filter(
            Q(**{f"{column}__{op}": after[0]})
            | Q(**{column: after[0], f"resource_id__{op}": after[1]})
        )
    order = [f"-{column}", "-resource_id"] if descending else [column, "resource_id"]
    return list(rows.order_by(*order).values_list(column, "resource_id")[:limit])


def _missing_segment(
    queryset: QuerySet[Resource],
    request: SearchRequest,
    descending: bool,
    after_pk: int | None,
    limit: int,
) -> list[tuple[Any, int]]:
    """Matching resources without a value for the sort parameter; they come last."""
    model, _ = _sort_column(request.sort)
    has_value = model._default_manager.filter(resource_id=OuterRef("pk"), param=request.sort.name)
    rows = queryset.filter(~Exists(has_value))
    if after_pk is not None:
        rows = rows.filter(**{f"pk__{'lt' if descending else 'gt'}": after_pk})
    pks = rows.order_by("-pk" if descending else "pk").values_list("pk", flat=True)[:limit]
    return [(None, pk) for pk in pks]


def _page_by_value(
    queryset: QuerySet[Resource], request: SearchRequest, position: dict[str, Any] | None
) -> tuple[list[Resource], bool, Direction]:
    """Keyset page for a sort on a parameter: resources with a value (in value order),
    then those without (in row order). A cursor with key null sits in the second part."""
    sort = request.sort
    direction = Direction(position["d"]) if position else Direction.NEXT
    descending = sort.descending != (direction == Direction.PREVIOUS)
    limit = request.count + 1
    in_missing = position is not None and position["k"] is None
    after = (
        None
        if position is None or in_missing
        else (_key_value(sort, position["k"]), int(position["i"]))
    )
    missing_after = int(position["i"]) if position is not None and in_missing else None
    if direction == Direction.NEXT:
        keys = [] if in_missing else _value_segment(queryset, request, descending, after, limit)
        if len(keys) < limit:
            keys += _missing_segment(
                queryset, request, descending, missing_after, limit - len(keys)
            )
    elif in_missing:
        keys = _missing_segment(queryset, request, descending, missing_after, limit)
        if len(keys) < limit:
            keys += _value_segment(queryset, request, descending, None, limit - len(keys))
    else:
        keys = _value_segment(queryset, request, descending, after, limit)
    more = len(keys) > request.count
    keys = keys[: request.count]
    if direction == Direction.PREVIOUS:
        keys.reverse()
    found = Resource.objects.in_bulk([pk for _, pk in keys])
    rows = []
    for key, pk in keys:
        resource = found[pk]
        resource.sort_key = key  # type: ignore[attr-defined]
        rows.append(resource)
    return rows, more, direction


def _key_json(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def _key_value(sort: SortKey, raw: Any) -> Any:
    if raw is None:
        return None
    if sort.kind in ("lastUpdated", ParamType.DATE):
        return datetime.fromisoformat(raw)
    if sort.kind in (ParamType.NUMBER, ParamType.QUANTITY):
        return Decimal(raw)
    return raw


def _digest(request: SearchRequest, resource_type: str | None) -> str:
    canonical = json.dumps([resource_type, [u for u in request.used if u[0] != Control.COUNT]])
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _cursor_make(caller: Caller, digest: str, direction: Direction, key: Any, pk: int) -> str:
    payload = {
        "t": caller.tenant.schema_name,
        "c": caller.client.client_id,
        "q": digest,
        "d": str(direction),
        "k": _key_json(key),
        "i": pk,
    }
    return signing.dumps(payload, salt=CURSOR_SALT, compress=True)


def _cursor_read(caller: Caller, token: str, digest: str) -> dict[str, Any]:
    try:
        payload = signing.loads(token, salt=CURSOR_SALT)
    except signing.BadSignature:
        raise _invalid(CURSOR_PARAM, "the page link is not valid") from None
    if payload.get("t") != caller.tenant.schema_name or payload.get("c") != caller.client.client_id:
        raise not_found()  # another tenant's or client's page link: indistinguishable from a miss
    if payload.get("q") != digest:
        raise _invalid(CURSOR_PARAM, "the page link belongs to a different search")
    return dict(payload)


def _page(
    queryset: QuerySet[Resource], request: SearchRequest, position: dict[str, Any] | None
) -> tuple[list[Resource], bool, Direction]:
    """One page of rows in sort order, whether more exist beyond it, and the direction read."""
    sort = request.sort
    if sort.kind not in ("pk", "id", "lastUpdated"):
        return _page_by_value(queryset, request, position)
    queryset = queryset.annotate(sort_key=_sort_expression(request))
    direction = Direction(position["d"]) if position else Direction.NEXT
    # Reading backwards (previous page) flips the order; the rows are reversed afterwards.
    descending = sort.descending != (direction == Direction.PREVIOUS)
    if position is not None:
        key, pk = _key_value(sort, position["k"]), int(position["i"])
        after = "lt" if descending else "gt"
        if sort.kind == "pk":
            queryset = queryset.filter(**{f"pk__{after}": pk})
        else:
            queryset = queryset.filter(
                Q(**{f"sort_key__{after}": key}) | Q(sort_key=key, **{f"pk__{after}": pk})
            )
    ordering = ["-sort_key", "-pk"] if descending else ["sort_key", "pk"]
    rows: list[Resource] = list(queryset.order_by(*ordering)[: request.count + 1])
    more = len(rows) > request.count
    rows = rows[: request.count]
    if direction == Direction.PREVIOUS:
        rows.reverse()
    return rows, more, direction


def _shape(content: dict[str, Any], request: SearchRequest) -> dict[str, Any]:
    if request.elements:
        keep = {"resourceType", "id", "meta", *request.elements}
        content = {k: v for k, v in content.items() if k in keep}
        meta = dict(content.get("meta") or {})
        meta["tag"] = [*meta.get("tag", []), SUBSETTED]
        content["meta"] = meta
    elif request.summary_data:
        content = {k: v for k, v in content.items() if k != "text"}
    return content


def _entry(base: str, resource: Resource, mode: str, request: SearchRequest) -> dict[str, Any]:
    content = _shape(resource.content, request) if mode == "match" else resource.content
    return {
        "fullUrl": f"{base}/{resource.resource_type}/{resource.logical_id}",
        "resource": content,
        "search": {"mode": mode},
    }


def _included(caller: Caller, request: SearchRequest, matches: list[Resource]) -> list[Resource]:
    """_include targets and _revinclude sources of the page, deduplicated, within scope."""
    if not matches or not (request.includes or request.revincludes):
        return []
    wanted = Q(pk__in=[])
    page_ids = [r.pk for r in matches]
    for source, param, target in request.includes:
        refs = ReferenceIndex.objects.filter(
            resource_id__in=page_ids, resource_type=source, param=param
        )
        refs = refs.exclude(target_type="")
        if target:
            refs = refs.filter(target_type=target)
        for target_type, target_id in refs.values_list("target_type", "target_id").distinct()[
            :MAX_INCLUDED
        ]:
            wanted |= Q(resource_type=target_type, logical_id=target_id)
    for source, param, target in request.revincludes:
        by_type: dict[str, list[str]] = {}
        for resource in matches:
            if target is None or resource.resource_type == target:
                by_type.setdefault(resource.resource_type, []).append(resource.logical_id)
        for target_type, ids in by_type.items():
            sources = ReferenceIndex.objects.filter(
                resource_type=source, param=param, target_type=target_type, target_id__in=ids
            ).values("resource_id")
            wanted |= Q(pk__in=Subquery(sources[:MAX_INCLUDED]))
    seen = {r.pk for r in matches}
    included = []
    for resource in Resource.objects.filter(wanted, deleted=False).order_by("pk")[:MAX_INCLUDED]:
        if resource.pk in seen or not scopes_allow(
            caller.scopes, resource.resource_type, Interaction.READ
        ):
            continue
        seen.add(resource.pk)
        included.append(resource)
    return included


def _link(base: str, path: str, used: list[tuple[str, str]], cursor: str | None = None) -> str:
    query = list(used) + ([(CURSOR_PARAM, cursor)] if cursor else [])
    return f"{base}/{path}?{urlencode(query)}" if query else f"{base}/{path}"


def search_bundle(
    *,
    caller: Caller,
    resource_type: str | None,
    params: list[tuple[str, str]],
    base_url: str,
    strict: bool,
) -> dict[str, Any]:
    """Run a search for `caller` and render the searchset Bundle (one page of it)."""
    base = base_url.rstrip("/")
    request = search_parse(resource_type=resource_type, params=params, strict=strict)
    if request.system_level:
        allowed = [
            t for t in request.resource_types if scopes_allow(caller.scopes, t, Interaction.SEARCH)
        ]
        if not request.resource_types or len(allowed) != len(request.resource_types):
            raise FhirError(
                403 if request.resource_types else 400,
                IssueCode.FORBIDDEN if request.resource_types else IssueCode.NOT_SUPPORTED,
                "System-level search needs _type naming types the client may search",
                expression=["_type"],
            )
    path = resource_type or ""
    queryset = _base_queryset(request, base)
    digest = _digest(request, resource_type)
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if request.summary_count or request.count == 0:  # _count=0 asks for the total only
        bundle["total"] = queryset.count()
        bundle["link"] = [{"relation": "self", "url": _link(base, path, request.used)}]
        return bundle
    position = _cursor_read(caller, request.cursor, digest) if request.cursor else None
    rows, more, direction = _page(queryset, request, position)
    links = [{"relation": "self", "url": _link(base, path, request.used, request.cursor)}]
    # Going forward, a cursor means rows lie behind; going backward, rows lie ahead.
    has_next = more if direction == Direction.NEXT else position is not None
    has_previous = position is not None if direction == Direction.NEXT else more
    if rows and has_next:
        last = rows[-1]
        token = _cursor_make(caller, digest, Direction.NEXT, last.sort_key, last.pk)  # type: ignore[attr-defined]
        links.append({"relation": "next", "url": _link(base, path, request.used, token)})
    if rows and has_previous:
        first = rows[0]
        token = _cursor_make(caller, digest, Direction.PREVIOUS, first.sort_key, first.pk)  # type: ignore[attr-defined]
        links.append({"relation": "previous", "url": _link(base, path, request.used, token)})
    bundle["link"] = links
    if request.total_accurate:
        bundle["total"] = queryset.count()
    elif position is None and not more:
        bundle["total"] = len(rows)  # the whole result is on this page: counting is free
    entries = [_entry(base, r, "match", request) for r in rows]
    entries += [_entry(base, r, "include", request) for r in _included(caller, request, rows)]
    if request.unknown:
        outcome = operation_outcome(
            Issue(
                code=IssueCode.NOT_SUPPORTED,
                severity=Severity.WARNING,
                diagnostics=f"Ignored unknown search parameter(s): {', '.join(request.unknown)}",
                expression=list(request.unknown),
            )
        )
        entries.append({"resource": outcome, "search": {"mode": "outcome"}})
    if entries:
        bundle["entry"] = entries
    return bundle
