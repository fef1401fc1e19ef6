"""Reads of the FHIR store of the current tenant schema: read, vread, history, matching.

The pipeline has already bound the connection to the caller's tenant schema, so every
query here sees that tenant only. History is paged by keyset cursors (last_updated, id),
never OFFSET, and a cursor is signed for the tenant and client it was issued to.
"""

from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qsl

from django.core import signing
from django.db.models import Q
from django.utils import dateparse, timezone

from fhirplatform.errors import FhirError, IssueCode, not_found
from fhirplatform.fhir.models import Resource, ResourceVersion
from fhirplatform.fhir.paging import DEFAULT_COUNT, count_parse
from fhirplatform.fhir.search.selectors import search_bundle
from fhirplatform.fhir.services import Method
from fhirplatform.fhir.validation import ID_PATTERN, resource_type_check
from tenants.tokens import Caller


def resource_read(*, resource_type: str, logical_id: str) -> Resource:
    """The current version; the shared 404 if it never existed, 410 if deleted."""
    resource_type_check(resource_type)
    if not ID_PATTERN.match(logical_id):
        raise not_found()
    resource = Resource.objects.filter(resource_type=resource_type, logical_id=logical_id).first()
    if resource is None:
        raise not_found()
    if resource.deleted:
        raise FhirError(
            410,
            IssueCode.DELETED,
            f"{resource_type}/{logical_id} has been deleted",
            headers={"ETag": f'W/"{resource.version_id}"'},
        )
    return resource


def resource_vread(*, resource_type: str, logical_id: str, version_id: str) -> ResourceVersion:
    resource_type_check(resource_type)
    if not version_id.isdigit() or not ID_PATTERN.match(logical_id):
        raise not_found()
    version = ResourceVersion.objects.filter(
        resource_type=resource_type, logical_id=logical_id, version_id=int(version_id)
    ).first()
    if version is None:
        raise not_found()
    if version.method == Method.DELETE:
        raise FhirError(
            410,
            IssueCode.DELETED,
            f"Version {version_id} of {resource_type}/{logical_id} is a delete",
        )
    return version


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


def _cursor_salt(caller: Caller, query: HistoryQuery) -> str:
    # A cursor replays only for the tenant, client and history it was issued for.
    return (
        f"fhir.history:{caller.tenant.slug}:{caller.client.client_id}:"
        f"{query.resource_type}:{query.logical_id}"
    )


def history_parse(
    *, params: dict[str, str], resource_type: str | None = None, logical_id: str | None = None
) -> HistoryQuery:
    """Validate _since and _count (400 with the parameter named); _count is capped."""
    since = None
    if params.get("_since"):
        text = params["_since"]
        since = dateparse.parse_datetime(text)
        if since is None and (day := dateparse.parse_date(text)) is not None:
            since = datetime(day.year, day.month, day.day, tzinfo=UTC)
        if since is None:
            raise FhirError(
                400,
                IssueCode.VALUE,
                f"_since '{text}' is not a FHIR instant",
                expression=["_since"],
            )
        if timezone.is_naive(since):
            raise FhirError(
                400, IssueCode.VALUE, "_since must carry a time zone", expression=["_since"]
            )
    count = count_parse(params.get("_count"))
    if resource_type is not None:
        resource_type_check(resource_type)
    return HistoryQuery(
        resource_type=resource_type, logical_id=logical_id, since=since, count=count
    )


def history_page(*, caller: Caller, query: HistoryQuery, cursor: str | None) -> HistoryPage:
    """One page of versions, newest first (instance history: by version number)."""
    if (
        query.logical_id is not None
        and not Resource.objects.filter(
            resource_type=query.resource_type, logical_id=query.logical_id
        ).exists()
    ):
        # The history of a resource that never existed is the shared 404, not an empty page.
        raise not_found()
    versions = ResourceVersion.objects.all()
    if query.resource_type:
        versions = versions.filter(resource_type=query.resource_type)
    if query.logical_id is not None:
        versions = versions.filter(logical_id=query.logical_id)
    if query.since:
        versions = versions.filter(last_updated__gte=query.since)
    if cursor:
        try:
            position = signing.loads(cursor, salt=_cursor_salt(caller, query))
            after = dateparse.parse_datetime(position["t"])
            last_id = int(position["i"])
        except (signing.BadSignature, KeyError, TypeError, ValueError) as exc:
            raise FhirError(
                400,
                IssueCode.INVALID,
                "The paging cursor is not valid here",
                expression=["_cursor"],
            ) from exc
        versions = versions.filter(
            Q(last_updated__lt=after) | Q(last_updated=after, id__lt=last_id)
        )
    ordered = versions.order_by("-last_updated", "-id")
    # One row more than the page says whether a next page exists without a COUNT(*).
    rows = list(ordered[: query.count + 1]) if query.count else []
    next_cursor = None
    if len(rows) > query.count:
        rows = rows[: query.count]
        last = rows[-1]
        next_cursor = signing.dumps(
            {"t": last.last_updated.isoformat(), "i": last.id}, salt=_cursor_salt(caller, query)
        )
    return HistoryPage(versions=rows, next_cursor=next_cursor)


def resource_match(*, caller: Caller, resource_type: str, query: str) -> list[Resource]:
    """Current resources matching a search query string (conditional create)."""
    params = [
        (name, value)
        for name, value in parse_qsl(query, keep_blank_values=True)
        if name != "_count"
    ]
    if not params:
        raise FhirError(400, IssueCode.INVALID, "If-None-Exist needs search criteria")
    bundle = search_bundle(
        caller=caller,
        resource_type=resource_type,
        params=[*params, ("_count", "2")],
        base_url="",
        strict=True,
    )
    ids = [
        entry["resource"]["id"]
        for entry in bundle.get("entry", [])
        if entry.get("search", {}).get("mode", "match") == "match"
        and "resource" in entry
        and entry["resource"].get("resourceType") == resource_type
    ]
    more = any(link.get("relation") == "next" for link in bundle.get("link", []))
    if len(ids) > 1 or more or bundle.get("total", len(ids)) > len(ids):
        raise FhirError(
            412, IssueCode.DUPLICATE, f"If-None-Exist '{query}' matches more than one resource"
        )
    return list(
        Resource.objects.filter(resource_type=resource_type, logical_id__in=ids, deleted=False)
    )
