"""Batch and transaction Bundles POSTed to the FHIR base.

A transaction is all or nothing: one database transaction, entries processed in the order
FHIR fixes (DELETE, POST, PUT/PATCH, GET), `urn:uuid:` fullUrls of created resources
assigned their server ids before any entry is written so references between entries
resolve. A batch runs each entry in its own savepoint and reports each entry's outcome.
Every entry is checked against the caller's scopes like a request of its own.

A Bundle is planned once, in the view's `describe()`: the plan prices the request for the
rate limiter and is the same plan the processing then runs.
"""

import base64
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from django.db import transaction

from fhirplatform.errors import FhirError, IssueCode, operation_outcome
from fhirplatform.fhir import selectors, services
from fhirplatform.fhir.representation import (
    etag,
    etag_version,
    instant_text,
    now_instant,
    resource_url,
    version_url,
)
from fhirplatform.fhir.search.selectors import search_bundle
from fhirplatform.limits.costs import bundle_size_check
from fhirplatform.resource_types import R4_RESOURCE_TYPES
from tenants.scopes import Interaction, scope_require
from tenants.tokens import Caller


class BundleKind:
    BATCH = "batch"
    TRANSACTION = "transaction"


_METHOD_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
_JSON_PATCH = "application/json-patch+json"


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


@dataclass
class BundlePlan:
    """A checked Bundle: its kind and one plan per entry, in request order."""

    kind: str
    entries: list[EntryPlan]

    @property
    def methods(self) -> list[str]:
        return [entry.method for entry in self.entries]


def _entry_error(index: int, error: FhirError) -> FhirError:
    """Name the entry in every issue, so a client knows which one failed."""
    for issue in error.issues:
        issue.diagnostics = f"Bundle.entry[{index}]: {issue.diagnostics}"
        issue.expression = [
            f"Bundle.entry[{index}].resource.{e.split('.', 1)[-1]}"
            if "." in e
            else f"Bundle.entry[{index}].{e}"
            for e in issue.expression
        ]
    return error


def _bad(index: int, diagnostics: str, element: str = "request") -> FhirError:
    return FhirError(
        400,
        IssueCode.INVALID,
        f"Bundle.entry[{index}]: {diagnostics}",
        expression=[f"Bundle.entry[{index}].{element}"],
    )


def _version(text: Any) -> int | None:
    return etag_version(text) if isinstance(text, str) else None


def _plan_entry(index: int, entry: Any, base_url: str) -> EntryPlan:
    if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
        raise _bad(index, "every entry needs a request (method and url)")
    request = entry["request"]
    method = str(request.get("method", "")).upper()
    url = request.get("url")
    if method not in _METHOD_ORDER or not isinstance(url, str) or not url:
        raise _bad(index, f"request method '{method}' / url '{url}' is not supported")
    if url.startswith(base_url + "/"):
        url = url[len(base_url) + 1 :]
    parts = urlsplit(url)
    if parts.scheme or parts.netloc:
        raise _bad(index, f"url '{url}' is not on this server", "request.url")
    segments = [s for s in parts.path.split("/") if s]
    query = parse_qsl(parts.query, keep_blank_values=True)
    if not segments or segments[0] not in R4_RESOURCE_TYPES:
        raise _bad(index, f"url '{url}' does not name an R4 resource type", "request.url")
    plan = EntryPlan(
        index=index,
        method=method,
        resource_type=segments[0],
        interaction=Interaction.READ,
        query=query,
        resource=entry.get("resource"),
        full_url=entry.get("fullUrl"),
        if_match=_version(request.get("ifMatch")),
        if_none_exist=request.get("ifNoneExist"),
        if_none_match=_version(request.get("ifNoneMatch")),
    )
    shape = (method, len(segments))
    if shape == ("POST", 1) and not query:
        plan.interaction = Interaction.CREATE
    elif shape in {("PUT", 2), ("PATCH", 2), ("DELETE", 2)} and not query:
        plan.logical_id = segments[1]
        plan.interaction = {
            "PUT": Interaction.UPDATE,
            "PATCH": Interaction.PATCH,
            "DELETE": Interaction.DELETE,
        }[method]
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
            f"{method} {url} is not a supported Bundle interaction "
            "(conditional update and delete are not supported)",
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
    entries = bundle.get("entry") or []
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


def _check_scope(caller: Caller, plan: EntryPlan) -> None:
    scope_require(
        scopes=caller.scopes, resource_type=plan.resource_type, interaction=plan.interaction
    )


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


def _patch_operations(index: int, resource: dict[str, Any]) -> Any:
    """A PATCH entry carries its JSON Patch as a Binary (FHIR R4 3.1.0.10)."""
    if resource.get("resourceType") != "Binary" or resource.get("contentType") != _JSON_PATCH:
        raise _bad(index, f"a PATCH entry's resource is a Binary of {_JSON_PATCH}", "resource")
    try:
        return json.loads(base64.b64decode(resource.get("data", ""), validate=True))
    except (ValueError, TypeError) as exc:
        raise _bad(index, f"the Binary does not hold a JSON Patch: {exc}", "resource") from exc


def _written(
    resource: Any, status: str, base_url: str, representation: bool, location: bool = True
) -> dict[str, Any]:
    response: dict[str, Any] = {
        "status": status,
        "etag": etag(resource.version_id),
        "lastModified": instant_text(resource.last_updated),
    }
    if location:
        response["location"] = version_url(base_url, resource)
    entry: dict[str, Any] = {
        "fullUrl": resource_url(base_url, resource.resource_type, resource.logical_id),
        "response": response,
    }
    if representation and not resource.deleted:
        entry["resource"] = resource.content
    return entry


def _execute(
    caller: Caller, plan: EntryPlan, *, base_url: str, source: str, representation: bool
) -> dict[str, Any]:
    _check_scope(caller, plan)
    kind = plan.interaction
    if kind == Interaction.CREATE:
        if plan.if_none_exist:
            result = services.resource_create_conditional(
                resource_type=plan.resource_type,
                content=plan.resource,
                source=source,
                query=plan.if_none_exist,
                logical_id=plan.assigned_id,
                matches=lambda t, q: selectors.resource_match(
                    caller=caller, resource_type=t, query=q
                ),
            )
            status = "201 Created" if result.created else "200 OK"
            return _written(result.resource, status, base_url, representation)
        created = services.resource_create(
            resource_type=plan.resource_type,
            content=plan.resource,
            source=source,
            logical_id=plan.assigned_id,
        )
        return _written(created, "201 Created", base_url, representation)
    assert plan.logical_id is not None
    if kind == Interaction.UPDATE:
        updated = services.resource_update(
            resource_type=plan.resource_type,
            logical_id=plan.logical_id,
            content=plan.resource,
            source=source,
            if_match=plan.if_match,
        )
        return _written(updated, "200 OK", base_url, representation)
    if kind == Interaction.PATCH:
        patched = services.resource_patch(
            resource_type=plan.resource_type,
            logical_id=plan.logical_id,
            patch=_patch_operations(plan.index, plan.resource),
            source=source,
            if_match=plan.if_match,
        )
        return _written(patched, "200 OK", base_url, representation)
    if kind == Interaction.DELETE:
        services.resource_delete(
            resource_type=plan.resource_type, logical_id=plan.logical_id, if_match=plan.if_match
        )
        return {"response": {"status": "204 No Content"}}
    if kind == Interaction.VREAD:
        assert plan.version_id is not None
        version = selectors.resource_vread(
            resource_type=plan.resource_type, logical_id=plan.logical_id, version_id=plan.version_id
        )
        return _written(version, "200 OK", base_url, True, location=False) | {
            "resource": version.content
        }
    read = selectors.resource_read(resource_type=plan.resource_type, logical_id=plan.logical_id)
    if plan.if_none_match is not None and plan.if_none_match == read.version_id:
        return {"response": {"status": "304 Not Modified", "etag": etag(read.version_id)}}
    return _written(read, "200 OK", base_url, True, location=False)


def _search_entry(caller: Caller, plan: EntryPlan, base_url: str) -> dict[str, Any]:
    _check_scope(caller, plan)
    bundle = search_bundle(
        caller=caller,
        resource_type=plan.resource_type,
        params=plan.query,
        base_url=base_url,
        strict=False,
    )
    return {"resource": bundle, "response": {"status": "200 OK"}}


def _run(
    caller: Caller, plan: EntryPlan, *, base_url: str, source: str, representation: bool
) -> dict[str, Any]:
    if plan.interaction == Interaction.SEARCH:
        return _search_entry(caller, plan, base_url)
    return _execute(caller, plan, base_url=base_url, source=source, representation=representation)


# Ids are assigned before anything runs so that every entry, whatever its position, can
# refer to any other; the whole run is one atomic block, and the first FhirError unwinds it.
def _transaction(
    caller: Caller, plans: list[EntryPlan], *, base_url: str, source: str, representation: bool
) -> list[dict[str, Any]]:
    id_map: dict[str, str] = {}
    for plan in plans:
        if plan.interaction == Interaction.CREATE:
            plan.assigned_id = services.new_logical_id()
            if plan.full_url:
                id_map[plan.full_url] = f"{plan.resource_type}/{plan.assigned_id}"
        elif plan.logical_id and plan.full_url:
            id_map[plan.full_url] = f"{plan.resource_type}/{plan.logical_id}"
    results: dict[int, dict[str, Any]] = {}
    with transaction.atomic():
        # Conditional creates that match an existing resource point their fullUrl at it.
        for plan in plans:
            if plan.interaction == Interaction.CREATE and plan.if_none_exist:
                try:
                    _check_scope(caller, plan)
                    found = selectors.resource_match(
                        caller=caller, resource_type=plan.resource_type, query=plan.if_none_exist
                    )
                except FhirError as error:
                    raise _entry_error(plan.index, error) from None
                if found and plan.full_url:
                    id_map[plan.full_url] = f"{plan.resource_type}/{found[0].logical_id}"
        for plan in sorted(plans, key=lambda p: (_METHOD_ORDER[p.method], p.index)):
            if id_map and plan.resource is not None:
                plan.resource = references_rewrite(plan.resource, id_map)
            try:
                results[plan.index] = _run(
                    caller, plan, base_url=base_url, source=source, representation=representation
                )
            except FhirError as error:
                raise _entry_error(plan.index, error) from None
    return [results[plan.index] for plan in plans]


def _batch(
    caller: Caller, plans: list[EntryPlan], *, base_url: str, source: str, representation: bool
) -> list[dict[str, Any]]:
    results: dict[int, dict[str, Any]] = {}
    for plan in sorted(plans, key=lambda p: (_METHOD_ORDER[p.method], p.index)):
        try:
            # A savepoint per entry: a failing entry undoes only its own partial writes.
            with transaction.atomic():
                results[plan.index] = _run(
                    caller, plan, base_url=base_url, source=source, representation=representation
                )
        except FhirError as error:
            error = _entry_error(plan.index, error)
            results[plan.index] = {
                "response": {
                    "status": str(error.status),
                    "outcome": operation_outcome(*error.issues),
                }
            }
    return [results[plan.index] for plan in plans]


def bundle_process(
    *,
    caller: Caller,
    planned: BundlePlan,
    base_url: str,
    source: str,
    representation: bool = False,
) -> dict[str, Any]:
    """Run a Bundle planned by `bundle_plan` and return its response Bundle."""
    runner = _transaction if planned.kind == BundleKind.TRANSACTION else _batch
    entries = runner(
        caller, planned.entries, base_url=base_url, source=source, representation=representation
    )
    return {
        "resourceType": "Bundle",
        "type": f"{planned.kind}-response",
        "meta": {"lastUpdated": instant_text(now_instant())},
        "entry": entries,
    }
