"""Batch and transaction Bundles POSTed to the FHIR base: their plan.

A Bundle is planned once, in the view's `describe()`: its shape and size are checked and
each entry becomes an EntryPlan. The plan prices the request for the rate limiter and is
the same plan bundle_processing.py then runs.
"""

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from fhirplatform.errors import FhirError, IssueCode
from fhirplatform.fhir.representation import (
    etag_version,
)
from fhirplatform.limits.costs import bundle_size_check
from fhirplatform.resource_types import R4_RESOURCE_TYPES
from tenants.scopes import Interaction


class BundleKind:
    BATCH = "batch"
    TRANSACTION = "transaction"


METHOD_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
_WRITES = {"PUT": Interaction.UPDATE, "PATCH": Interaction.PATCH, "DELETE": Interaction.DELETE}


@dataclass
class EntryPlan:
    index: int
    method: str
    resource_type: str
    interaction: Interaction
    logical_id: str | None = None
    version_id: str | None = None
    query: list[tuple[str, str]] = field(default_factory=list)
    resource: Any = None
    full_url: str | None = None
    if_match: int | None = None
    if_none_exist: str | None = None
    if_none_match: int | None = None
    assigned_id: str | None = None
    # The search criteria of a conditional update, patch or delete (`Type?criteria`).
    criteria: str | None = None


@dataclass
class BundlePlan:
    """A checked Bundle: its kind and one plan per entry, in request order."""

    kind: str
    entries: list[EntryPlan]

    @property
    def methods(self) -> list[str]:
        return [entry.method for entry in self.entries]


def _bad(index: int, diagnostics: str, element: str = "request") -> FhirError:
    return FhirError(
        400,
        IssueCode.INVALID,
        f"Bundle.entry[{index}]: {diagnostics}",
        expression=[f"Bundle.entry[{index}]" + (f".{element}" if element else "")],
    )


def _text(index: int, value: Any, element: str) -> str | None:
    """An optional string element of an entry: absent is None, another JSON type a 400."""
    if value is not None and not isinstance(value, str):
        raise _bad(index, f"{element} must be a string, not {type(value).__name__}", element)
    return value


def _version(index: int, value: Any, element: str) -> int | None:
    return etag_version(_text(index, value, element))


def _plan_entry(index: int, entry: Any, base_url: str) -> EntryPlan:
    if not isinstance(entry, dict):
        raise _bad(index, "an entry must be an object", "")
    request = entry.get("request")
    if not isinstance(request, dict):
        raise _bad(index, "every entry needs a request (method and url)")
    method = _text(index, request.get("method"), "request.method") or ""
    method = method.upper()
    if method not in METHOD_ORDER:
        raise _bad(index, f"request method '{method[:20]}' is not supported", "request.method")
    url = _text(index, request.get("url"), "request.url")
    if not url:
        raise _bad(index, "request.url is required", "request.url")
    if url.startswith(base_url + "/"):
        url = url[len(base_url) + 1 :]
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. http://[::1/Patient, an IPv6 host never closed
        raise _bad(index, f"url '{url[:200]}' is not a URL: {exc}", "request.url") from None
    if parts.scheme or parts.netloc:
        raise _bad(index, f"url '{url[:200]}' is not on this server", "request.url")
    segments = [s for s in parts.path.split("/") if s]
    query = parse_qsl(parts.query, keep_blank_values=True)
    if not segments or segments[0] not in R4_RESOURCE_TYPES:
        raise _bad(index, f"url '{url[:200]}' does not name an R4 resource type", "request.url")
    resource = entry.get("resource")
    if resource is not None and not isinstance(resource, dict):
        raise _bad(index, "resource must be a resource (a JSON object)", "resource")
    plan = EntryPlan(
        index=index,
        method=method,
        resource_type=segments[0],
        interaction=Interaction.READ,
        query=query,
        resource=resource,
        full_url=_text(index, entry.get("fullUrl"), "fullUrl"),
        if_match=_version(index, request.get("ifMatch"), "request.ifMatch"),
        if_none_exist=_text(index, request.get("ifNoneExist"), "request.ifNoneExist"),
        if_none_match=_version(index, request.get("ifNoneMatch"), "request.ifNoneMatch"),
    )
    shape = (method, len(segments))
    if shape == ("POST", 1) and not query:
        plan.interaction = Interaction.CREATE
    elif shape in {("PUT", 2), ("PATCH", 2), ("DELETE", 2)} and not query:
        plan.logical_id = segments[1]
        plan.interaction = _WRITES[method]
    elif shape in {("PUT", 1), ("PATCH", 1), ("DELETE", 1)} and parts.query:
        plan.criteria = parts.query
        plan.interaction = _WRITES[method]
    elif method in ("GET", "HEAD") and len(segments) == 1:
        plan.interaction = Interaction.SEARCH
    elif method in ("GET", "HEAD") and len(segments) == 2:
        plan.logical_id = segments[1]
    elif method in ("GET", "HEAD") and len(segments) == 4 and segments[2] == "_history":
        plan.logical_id, plan.version_id = segments[1], segments[3]
        plan.interaction = Interaction.VREAD
    else:
        raise _bad(
            index,
            f"{method} {url[:200]} is not a supported Bundle interaction",
            "request.url",
        )
    if method in ("POST", "PUT", "PATCH") and not isinstance(plan.resource, dict):
        raise _bad(index, f"{method} needs a resource", "resource")
    return plan


def bundle_plan(*, bundle: Any, base_url: str) -> BundlePlan:
    """Check the Bundle's shape and size, then plan its entries; 400 naming the first bad
    entry, 413 (before any entry is looked at) for too many entries."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise FhirError(
            400,
            IssueCode.INVALID,
            "POST to the base takes a Bundle",
            expression=["Bundle.resourceType"],
        )
    kind = bundle.get("type")
    if kind not in (BundleKind.BATCH, BundleKind.TRANSACTION):
        raise FhirError(
            400,
            IssueCode.VALUE,
            f"Bundle.type must be batch or transaction, not '{kind}'",
            expression=["Bundle.type"],
        )
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise FhirError(
            400, IssueCode.STRUCTURE, "Bundle.entry must be an array", expression=["Bundle.entry"]
        )
    bundle_size_check(entries=len(entries))
    plans = [_plan_entry(index, entry, base_url) for index, entry in enumerate(entries)]
    if kind == BundleKind.TRANSACTION:
        full_urls = [p.full_url for p in plans if p.full_url]
        if len(full_urls) != len(set(full_urls)):
            raise FhirError(
                400,
                IssueCode.DUPLICATE,
                "Two transaction entries share a fullUrl",
                expression=["Bundle.entry.fullUrl"],
            )
    return BundlePlan(kind=kind, entries=plans)


def references_rewrite(content: Any, id_map: dict[str, str]) -> Any:
    """Point every `reference` found in id_map (urn:uuid fullUrls) at its stored id."""
    if isinstance(content, dict):
        return {
            key: (
                id_map.get(value, value)
                if key == "reference" and isinstance(value, str)
                else references_rewrite(value, id_map)
            )
            for key, value in content.items()
        }
    if isinstance(content, list):
        return [references_rewrite(item, id_map) for item in content]
    return content
