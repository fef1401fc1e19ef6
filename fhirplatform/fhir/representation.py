"""How stored resources and versions are shown: ETags, instants, the 410, history Bundles.

Below the services and selectors of the FHIR store (they import it, never the reverse).
"""

from datetime import UTC, datetime
from typing import Any, Protocol

from django.utils import timezone
from django.utils.http import http_date

from fhirplatform.errors import FhirError, IssueCode
from fhirplatform.fhir.http import digits_parse
from fhirplatform.fhir.models import Method, ResourceVersion

_METHOD_STATUS = {
    Method.POST: "201 Created",
    Method.PUT: "200 OK",
    Method.PATCH: "200 OK",
    Method.DELETE: "204 No Content",
}


class VersionNamed(Protocol):
    """What names one version: a Resource or ResourceVersion row, or a read's result."""

    @property
    def resource_type(self) -> str: ...
    @property
    def logical_id(self) -> str: ...
    @property
    def version_id(self) -> int: ...


class Versioned(VersionNamed, Protocol):
    @property
    def last_updated(self) -> datetime: ...


def now_instant() -> datetime:
    """Now, truncated to milliseconds so meta.lastUpdated and the column agree exactly."""
    now = timezone.now()
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def instant_text(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def etag(version_id: int) -> str:
    """The weak ETag of a version: versions are compared by number, not by bytes."""
    return f'W/"{version_id}"'


def resource_gone(row: VersionNamed) -> FhirError:
    """The 410 for a deleted resource (read, patch) and for a delete version (vread): one
    answer, whose ETag names the delete version."""
    return FhirError(
        410,
        IssueCode.DELETED,
        f"{row.resource_type}/{row.logical_id} was deleted in version {row.version_id}",
        headers={"ETag": etag(row.version_id)},
    )


def etag_version(header: str | None) -> int | None:
    """The version in an If-Match / If-None-Match value (W/"3", "3" or 3); None without a
    header, -1 (a version that never matches) for anything else."""
    if not header:
        return None
    version = digits_parse(header.strip().removeprefix("W/").strip('"'))
    return -1 if version is None else version


def last_modified(value: datetime) -> str:
    return http_date(value.timestamp())


def version_headers(resource: Versioned) -> dict[str, str]:
    return {
        "ETag": etag(resource.version_id),
        "Last-Modified": last_modified(resource.last_updated),
    }


def resource_url(base_url: str, resource_type: str, logical_id: str) -> str:
    return f"{base_url}/{resource_type}/{logical_id}"


def version_url(base_url: str, resource: VersionNamed) -> str:
    return (
        f"{resource_url(base_url, resource.resource_type, resource.logical_id)}"
        f"/_history/{resource.version_id}"
    )


def history_bundle(
    *,
    versions: list[ResourceVersion],
    base_url: str,
    self_url: str,
    next_url: str | None,
    previous_url: str | None,
    total: int,
) -> dict[str, Any]:
    links = [{"relation": "self", "url": self_url}]
    if next_url:
        links.append({"relation": "next", "url": next_url})
    if previous_url:
        links.append({"relation": "previous", "url": previous_url})
    entries = []
    for version in versions:
        entry: dict[str, Any] = {
            "fullUrl": resource_url(base_url, version.resource_type, version.logical_id)
        }
        if version.content is not None:
            entry["resource"] = version.content
        method = Method(version.method)
        # A create is requested on the type; updates, patches and deletes on the instance.
        url = (
            version.resource_type
            if method == Method.POST
            else (f"{version.resource_type}/{version.logical_id}")
        )
        entry["request"] = {"method": str(method), "url": url}
        entry["response"] = {
            "status": _METHOD_STATUS[method],
            "etag": etag(version.version_id),
            "lastModified": instant_text(version.last_updated),
        }
        entries.append(entry)
    return {
        "resourceType": "Bundle",
        "type": "history",
        "meta": {"lastUpdated": instant_text(now_instant())},
        "total": total,
        "link": links,
        "entry": entries,
    }
