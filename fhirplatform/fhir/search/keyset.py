"""Keyset paging of search results, and the page cursors that carry a page's edge.

A page is cut by the sort key and row id of its edge row, never by OFFSET: page n costs
what page 1 costs. The edge travels in a cursor of the one signed scheme of
fhirplatform/fhir/paging.py, bound to the tenant, the client and a digest of the search.
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from django.db import models
from django.db.models import Exists, ExpressionWrapper, F, OuterRef, Q, QuerySet, TextField

from fhirplatform.fhir.models import Resource
from fhirplatform.fhir.paging import cursor_digest, cursor_invalid, cursor_make, cursor_read
from fhirplatform.fhir.search.models import INDEX_MODEL
from fhirplatform.fhir.search.parsing import Control, SearchRequest, SortKey
from fhirplatform.fhir.search.registry import ParamType
from fhirplatform.resource_types import STORED_RESOURCE_TYPES
from tenants.tokens import Caller

if TYPE_CHECKING:
    from fhirplatform.fhir.search.semantic import SearchMemo


def with_stored_text(queryset: QuerySet[Resource]) -> QuerySet[Resource]:
    """The rows with their JSON as PostgreSQL sends it (`content_text`), not parsed into a
    dict: a searchset sends it on as it is (searchset.py).

    The column itself, read as text (Django's PostgreSQL backend loads jsonb as a string
    and leaves parsing to JSONField): a `content::text` cast would be computed for every
    matching row before the sort and LIMIT, not for the page only."""
    text = ExpressionWrapper(F("content"), output_field=TextField())
    return queryset.defer("content").annotate(content_text=text)


# Sort kinds answered from a column of the resource row rather than an index table.
_COLUMN_SORTS = {"pk": "pk", "id": "logical_id", "lastUpdated": "last_updated"}


class Direction(StrEnum):
    NEXT = "next"
    PREVIOUS = "previous"


@dataclass(frozen=True)
class Position:
    """Where a cursor points: the edge row's sort key (None: no value) and id, and the
    direction to read from it."""

    direction: Direction
    key: Any
    pk: int


@dataclass(frozen=True)
class Page:
    rows: list[Resource]
    next_cursor: str | None
    previous_cursor: str | None


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


def _digest(request: SearchRequest) -> str:
    used = [list(u) for u in request.used if u[0] != Control.COUNT]
    return cursor_digest("search", request.resource_types, request.system_level, used)


def _position(caller: Caller, request: SearchRequest, cursor: str) -> Position:
    raw = cursor_read(caller=caller, cursor=cursor, digest=_digest(request))
    try:
        return Position(Direction(raw["d"]), _key_value(request.sort, raw["k"]), int(raw["i"]))
    except (KeyError, TypeError, ValueError, ArithmeticError):
        raise cursor_invalid() from None


def _cursor(caller: Caller, request: SearchRequest, direction: Direction, row: Resource) -> str:
    key = row.sort_key  # type: ignore[attr-defined]
    position = {"d": str(direction), "k": _key_json(key), "i": row.pk}
    return cursor_make(caller=caller, digest=_digest(request), position=position)


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
        resource_type__in=request.resource_types or sorted(STORED_RESOURCE_TYPES),
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


def _rows_by_value(
    queryset: QuerySet[Resource],
    request: SearchRequest,
    position: Position | None,
    descending: bool,
    limit: int,
) -> list[Resource]:
    """Rows for a sort on a parameter: resources with a value (in value order), then
    those without (in row order). A cursor with key null sits in the second part."""
    in_missing = position is not None and position.key is None
    after = None if position is None or in_missing else (position.key, position.pk)
    missing_after = position.pk if position is not None and in_missing else None
    forward = position is None or position.direction == Direction.NEXT
    if forward:
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
    found = with_stored_text(Resource.objects.all()).in_bulk([pk for _, pk in keys])
    rows = []
    for key, pk in keys:
        resource = found[pk]
        resource.sort_key = key  # type: ignore[attr-defined]
        rows.append(resource)
    return rows


def _rows_by_column(
    queryset: QuerySet[Resource],
    request: SearchRequest,
    position: Position | None,
    descending: bool,
    limit: int,
) -> list[Resource]:
    """Rows for a sort on a column of the resource row (row id, id, lastUpdated)."""
    sort = request.sort
    queryset = with_stored_text(queryset).annotate(sort_key=F(_COLUMN_SORTS[sort.kind]))
    if position is not None:
        after = "lt" if descending else "gt"
        if sort.kind == "pk":
            queryset = queryset.filter(**{f"pk__{after}": position.pk})
        else:
            queryset = queryset.filter(
                Q(**{f"sort_key__{after}": position.key})
                | Q(sort_key=position.key, **{f"pk__{after}": position.pk})
            )
    ordering = ["-sort_key", "-pk"] if descending else ["sort_key", "pk"]
    return list(queryset.order_by(*ordering)[:limit])


@dataclass(frozen=True)
class Located:
    """A page before its cursors: its rows in page order, and whether rows lie beyond it."""

    rows: list[Resource]
    has_next: bool
    has_previous: bool


def _locate(
    queryset: QuerySet[Resource], request: SearchRequest, position: Position | None
) -> Located:
    direction = position.direction if position else Direction.NEXT
    # Reading backwards (previous page) flips the order; the rows are reversed afterwards.
    descending = request.sort.descending != (direction == Direction.PREVIOUS)
    read = _rows_by_column if request.sort.kind in _COLUMN_SORTS else _rows_by_value
    # One row more than the page says whether more lie beyond it, without a COUNT(*).
    rows = read(queryset, request, position, descending, request.count + 1)
    more = len(rows) > request.count
    rows = rows[: request.count]
    if direction == Direction.PREVIOUS:
        rows.reverse()
    # Going forward, a cursor means rows lie behind; going backward, rows lie ahead.
    has_next = more if direction == Direction.NEXT else position is not None
    has_previous = position is not None if direction == Direction.NEXT else more
    return Located(rows=rows, has_next=has_next, has_previous=has_previous)


def position_parts(position: Position | None) -> list[Any] | None:
    """A position as JSON, for the semantic cache's key of the page it starts."""
    if position is None:
        return None
    return [str(position.direction), _key_json(position.key), position.pk]


def located_encode(located: Located) -> list[Any]:
    """A located page as JSON: each row's sort key and id, and the two flags."""
    keys = [[_key_json(row.sort_key), row.pk] for row in located.rows]  # type: ignore[attr-defined]
    return [keys, located.has_next, located.has_previous]


def located_decode(request: SearchRequest, stored: list[Any]) -> Located | None:
    """The page `located_encode` stored, its rows read again by id (one statement);
    None when one of them is gone since (deleted, or the entry is not one of ours)."""
    keys, has_next, has_previous = stored
    found = with_stored_text(Resource.objects.filter(deleted=False)).in_bulk([pk for _, pk in keys])
    rows = []
    for raw, pk in keys:
        resource = found.get(pk)
        if resource is None:
            return None
        resource.sort_key = _key_value(request.sort, raw)  # type: ignore[attr-defined]
        rows.append(resource)
    return Located(rows=rows, has_next=bool(has_next), has_previous=bool(has_previous))


def page_read(
    *,
    caller: Caller,
    matching: Callable[[], QuerySet[Resource]],
    request: SearchRequest,
    memo: "SearchMemo",
) -> Page:
    """The page of the search's matches (`matching` builds their queryset) that the
    request's cursor points at (the first without one), in sort order, with cursors for
    the pages before and after it where rows lie there. `memo`: the search's semantic
    cache, which may know the page's rows by id (then `matching` is never built)."""
    position = _position(caller, request, request.cursor) if request.cursor else None
    located = memo.page(position, lambda: _locate(matching(), request, position))
    rows = located.rows
    return Page(
        rows=rows,
        next_cursor=_cursor(caller, request, Direction.NEXT, rows[-1])
        if rows and located.has_next
        else None,
        previous_cursor=_cursor(caller, request, Direction.PREVIOUS, rows[0])
        if rows and located.has_previous
        else None,
    )
