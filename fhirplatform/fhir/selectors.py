"""Reads of the FHIR store of the current tenant schema: read, vread, history, matching.

The pipeline has already bound the connection to the caller's tenant schema, so every
query here sees that tenant only: read and vread name it in their one statement, the
others get it from the backend's search_path. History is paged by keyset cursors (last_updated, id),
never OFFSET, in the signed-cursor scheme of paging.py that search uses too.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from django.db.models import Q

from fhirplatform.db.named import schema_named_cursor, schema_table
from fhirplatform.errors import FhirError, IssueCode, not_found
from fhirplatform.fhir.http import JsonText, digits_parse
from fhirplatform.fhir.models import Method, Resource, ResourceVersion, id_valid
from fhirplatform.fhir.paging import (
    DEFAULT_COUNT,
    count_parse,
    cursor_digest,
    cursor_invalid,
    cursor_make,
    cursor_read,
)
from fhirplatform.fhir.representation import resource_gone
from fhirplatform.fhir.search.parsing import search_parse
from fhirplatform.fhir.search.selectors import search_matches
from fhirplatform.fhir.search.values import instant_parse
from fhirplatform.fhir.validation import resource_type_check
from fhirplatform.resource_types import R4_RESOURCE_TYPES
from tenants.scopes import Interaction, scopes_allow
from tenants.tokens import Caller

if TYPE_CHECKING:
    from consent.enforcement import ConsentGuard


@dataclass(frozen=True)
class StoredVersion:
    """One version as a read answers it: its headers' values and its JSON, as stored."""

    resource_type: str
    logical_id: str
    version_id: int
    last_updated: datetime
    content: JsonText
    compartment: list[str]  # the patients the consent decision asked


@dataclass(frozen=True)
class _Deleted:
    resource_type: str
    logical_id: str
    version_id: int


# One statement each, naming its schema: a read needs no search_path and no transaction.
# A deleted resource's content stays in its row; the 410 does not need it sent. The row's
# compartment and labels are what the consent decision reads.
_READ = (
    "SELECT version_id, last_updated, deleted, "
    "CASE WHEN deleted THEN NULL ELSE content::text END, compartment, security_labels "
    "FROM {table} WHERE resource_type = %s AND logical_id = %s"
)
_VREAD = (
    "SELECT last_updated, method, content::text, compartment, security_labels FROM {table} "
    "WHERE resource_type = %s AND logical_id = %s AND version_id = %s"
)


def _row(statement: str, params: list[Any]) -> Any:
    with schema_named_cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchone()


def resource_read(*, resource_type: str, logical_id: str, consent: "ConsentGuard") -> StoredVersion:
    """The current version; the shared 404 if it never existed, 410 if deleted; the
    consent guard's denied answer (before the 410: a deleted resource of a patient who
    denies the caller is not the caller's to know of)."""
    resource_type_check(resource_type)
    if not id_valid(logical_id):
        raise not_found()
    row = _row(_READ.format(table=schema_table(Resource)), [resource_type, logical_id])
    if row is None:
        raise not_found()
    version_id, last_updated, deleted, text, compartment, labels = row
    consent.require(resource_type=resource_type, patients=compartment, labels=labels)
    if deleted:
        raise resource_gone(_Deleted(resource_type, logical_id, version_id))
    return StoredVersion(
        resource_type, logical_id, version_id, last_updated, JsonText(text), compartment
    )


def resource_vread(
    *, resource_type: str, logical_id: str, version_id: str, consent: "ConsentGuard"
) -> StoredVersion:
    """One version; the shared 404 if there is none, 410 if it is a delete; the consent
    guard's denied answer, decided on that version's compartment and labels."""
    resource_type_check(resource_type)
    number = digits_parse(version_id)
    if number is None or not id_valid(logical_id):
        raise not_found()
    row = _row(
        _VREAD.format(table=schema_table(ResourceVersion)), [resource_type, logical_id, number]
    )
    if row is None:
        raise not_found()
    last_updated, method, text, compartment, labels = row
    consent.require(resource_type=resource_type, patients=compartment, labels=labels)
    if method == Method.DELETE:
        raise resource_gone(_Deleted(resource_type, logical_id, number))
    return StoredVersion(
        resource_type, logical_id, number, last_updated, JsonText(text), compartment
    )


@dataclass(frozen=True)
class HistoryQuery:
    resource_type: str | None = None
    logical_id: str | None = None
    since: datetime | None = None
    count: int = DEFAULT_COUNT


@dataclass(frozen=True)
class HistoryPage:
    versions: list[ResourceVersion]
    next_cursor: str | None
    previous_cursor: str | None
    total: int  # every version the query selects, on every page


def _history_digest(query: HistoryQuery) -> str:
    # _since is part of the query a cursor belongs to; _count (the page size) is not.
    since = query.since.isoformat() if query.since else None
    return cursor_digest("history", query.resource_type, query.logical_id, since)


@dataclass(frozen=True)
class _HistoryEdge:
    """Where a history cursor pages from: a version's (last_updated, id), and whether the
    page wanted is the older one after it (next) or the newer one before it (previous)."""

    last_updated: datetime
    id: int
    newer: bool


def _history_edge(caller: Caller, query: HistoryQuery, cursor: str) -> _HistoryEdge:
    position = cursor_read(caller=caller, cursor=cursor, digest=_history_digest(query))
    try:
        return _HistoryEdge(
            datetime.fromisoformat(position["t"]), int(position["i"]), position.get("d") == "b"
        )
    except (KeyError, TypeError, ValueError):
        raise cursor_invalid() from None


def _history_cursor(caller: Caller, query: HistoryQuery, version: Any, *, newer: bool) -> str:
    position: dict[str, Any] = {"t": version.last_updated.isoformat(), "i": version.id}
    if newer:
        position["d"] = "b"
    return cursor_make(caller=caller, digest=_history_digest(query), position=position)


def history_parse(
    *, params: dict[str, str], resource_type: str | None = None, logical_id: str | None = None
) -> HistoryQuery:
    """Validate _since and _count (400 with the parameter named; paging.count_parse)."""
    since = None
    if text := params.get("_since"):
        # The search side's date grammar: ASCII digits, and within years 0001-9999 in UTC.
        since = instant_parse(text)
        if since is None:
            raise FhirError(
                400,
                IssueCode.VALUE,
                f"_since '{text[:100]}' is not a FHIR instant with a time zone (or a date) "
                "between the years 0001 and 9999",
                expression=["_since"],
            )
    count = count_parse(params.get("_count"))
    if resource_type is not None:
        resource_type_check(resource_type)
    return HistoryQuery(
        resource_type=resource_type, logical_id=logical_id, since=since, count=count
    )


def history_page(
    *, caller: Caller, query: HistoryQuery, cursor: str | None, consent: "ConsentGuard"
) -> HistoryPage:
    """One page of versions, newest first (instance history: by version number), without
    the versions the caller's consent decision denies (each decided on its own
    compartment and labels, in SQL); the cursors of the pages after and before it, and
    how many versions there are in all."""
    if query.logical_id is not None:
        current = (
            Resource.objects.filter(resource_type=query.resource_type, logical_id=query.logical_id)
            .values_list("compartment", "security_labels")
            .first()
        )
        # The history of a resource that never existed is the shared 404, not an empty
        # page; that of one the caller may not see answers as its read would.
        if current is None:
            raise not_found()
        assert query.resource_type is not None
        consent.require(resource_type=query.resource_type, patients=current[0], labels=current[1])
    versions = ResourceVersion.objects.all()
    if query.resource_type:
        versions = versions.filter(resource_type=query.resource_type)
    if query.logical_id is not None:
        versions = versions.filter(logical_id=query.logical_id)
    if query.since:
        versions = versions.filter(last_updated__gte=query.since)
    types = [query.resource_type] if query.resource_type else sorted(R4_RESOURCE_TYPES)
    versions = consent.visible(versions, resource_types=types)
    total = versions.count()
    edge = _history_edge(caller, query, cursor) if cursor else None
    # One row more than the page says whether another page lies beyond, without a COUNT.
    if edge is not None and edge.newer:
        newer = versions.filter(
            Q(last_updated__gt=edge.last_updated)
            | Q(last_updated=edge.last_updated, id__gt=edge.id)
        )
        rows = list(newer.order_by("last_updated", "id")[: query.count + 1])
        more_newer, more_older = len(rows) > query.count, True
        rows = rows[: query.count][::-1]
    else:
        if edge is not None:
            versions = versions.filter(
                Q(last_updated__lt=edge.last_updated)
                | Q(last_updated=edge.last_updated, id__lt=edge.id)
            )
        rows = list(versions.order_by("-last_updated", "-id")[: query.count + 1])
        more_newer, more_older = edge is not None, len(rows) > query.count
        rows = rows[: query.count]
    return HistoryPage(
        versions=rows,
        next_cursor=_history_cursor(caller, query, rows[-1], newer=False)
        if rows and more_older
        else None,
        previous_cursor=_history_cursor(caller, query, rows[0], newer=True)
        if rows and more_newer
        else None,
        total=total,
    )


def _criteria_matches(
    *,
    caller: Caller | None,
    resource_type: str,
    criteria: str,
    consent: "ConsentGuard | None",
    most: int,
) -> list[Resource]:
    request = search_parse(
        resource_type=resource_type,
        params=parse_qsl(criteria, keep_blank_values=True),
        strict=True,
    )
    matches = search_matches(caller=caller, request=request, base_url="", consent=consent)
    # One row more than asked for tells the caller there are too many.
    return list(matches.order_by("id")[: most + 1])


def resource_match(
    *,
    caller: Caller,
    resource_type: str,
    criteria: str,
    consent: "ConsentGuard | None" = None,
    most: int = 1,
) -> list[Resource]:
    """Current resources matching conditional criteria, already made canonical by
    `criteria_canonical`: at most `most` + 1, so that the caller can tell "too many".

    The match is a search for `caller`, so it needs the caller's search scope on the type
    (and chained targets) like any search: criteria are no way round it. `consent`: the
    caller's guard for a conditional update, delete or patch, which must neither reveal
    nor touch what the caller may not see; None for a conditional create's duplicate check
    (a match the caller may not see still matches; match_disclosable decides what the
    answer shows of it)."""
    return _criteria_matches(
        caller=caller, resource_type=resource_type, criteria=criteria, consent=consent, most=most
    )


def resource_match_unscoped(*, resource_type: str, criteria: str) -> list[Resource]:
    """Conditional-create criteria matched by the platform itself (the bulk loader, an
    operator's tool with no caller): no scope, no consent; at most two resources."""
    return _criteria_matches(
        caller=None, resource_type=resource_type, criteria=criteria, consent=None, most=1
    )


def match_disclosable(*, caller: Caller, match: Resource, consent: "ConsentGuard") -> bool:
    """Whether the answer to a conditional create that matched may show the match.

    Only to a caller with read scope on the type whose consent decision permits the
    match: any other caller learns that a match exists (its search scope tells it as
    much), never the resource, its id or its version.
    """
    return scopes_allow(caller.scopes, match.resource_type, Interaction.READ) and consent.permits(
        resource_type=match.resource_type,
        patients=match.compartment,
        labels=match.security_labels,
    )
