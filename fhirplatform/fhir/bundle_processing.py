"""Running a planned batch or transaction Bundle (bundles.py plans it).

A transaction is all or nothing: one database transaction, entries processed in the order
FHIR fixes (DELETE, POST, PUT/PATCH, GET), `urn:uuid:` fullUrls of created resources
assigned their server ids before any entry is written so references between entries
resolve. A batch runs each entry in its own savepoint and reports each entry's outcome,
a server error in one entry included. Every entry is checked against the caller's scopes
like a request of its own.
"""

import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.db import transaction

from fhirplatform.db.faults import database_fault
from fhirplatform.errors import FhirError, IssueCode, operation_outcome
from fhirplatform.fhir import selectors, services
from fhirplatform.fhir.bundles import (
    METHOD_ORDER,
    BundleKind,
    BundlePlan,
    EntryPlan,
    references_rewrite,
)
from fhirplatform.fhir.http import json_parse
from fhirplatform.fhir.representation import (
    etag,
    instant_text,
    now_instant,
    resource_url,
    version_url,
)
from fhirplatform.fhir.search.selectors import search_bundle
from tenants.scopes import Interaction, scope_require
from tenants.tokens import Caller

if TYPE_CHECKING:
    from consent.enforcement import ConsentGuard

logger = logging.getLogger(__name__)

_JSON_PATCH = "application/json-patch+json"


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


def _check_scope(caller: Caller, plan: EntryPlan) -> None:
    scope_require(
        scopes=caller.scopes, resource_type=plan.resource_type, interaction=plan.interaction
    )


def _patch_operations(resource: dict[str, Any]) -> Any:
    """A PATCH entry carries its JSON Patch as a Binary (FHIR R4 3.1.0.10). Errors are
    named for their entry by the caller (_entry_error)."""
    if resource.get("resourceType") != "Binary" or resource.get("contentType") != _JSON_PATCH:
        raise FhirError(
            400,
            IssueCode.INVALID,
            f"a PATCH entry's resource is a Binary of {_JSON_PATCH}",
            expression=["resource"],
        )
    try:
        return json_parse(base64.b64decode(resource.get("data", ""), validate=True))
    except (ValueError, TypeError, FhirError) as exc:
        raise FhirError(
            400,
            IssueCode.INVALID,
            f"the Binary does not hold a JSON Patch: {exc}",
            expression=["resource"],
        ) from exc


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


def _matcher(caller: Caller) -> services.MatchFunction:
    def matches(resource_type: str, criteria: str) -> list[Any]:
        return selectors.resource_match(
            caller=caller, resource_type=resource_type, criteria=criteria
        )

    return matches


@dataclass(frozen=True)
class _Run:
    """What every entry of one Bundle runs with: who asks, how answers are written, and
    the caller's consent guard for what its reads and searches show."""

    caller: Caller
    base_url: str
    source: str
    representation: bool
    consent: "ConsentGuard"
    # Told the patients of every resource an entry shows or writes (the audit event's).
    seen: Callable[[list[str]], None]

    def written(
        self, resource: Any, status: str, *, shown: bool | None = None, location: bool = True
    ) -> dict[str, Any]:
        """An entry's answer naming `resource` (its body when `shown`, by default when
        the Bundle asked for representations); its patients go to the audit event."""
        self.seen(resource.compartment)
        representation = self.representation if shown is None else shown
        return _written(resource, status, self.base_url, representation, location)


def _visible_matcher(run: _Run) -> services.VisibleMatchFunction:
    def matches(resource_type: str, criteria: str, most: int) -> list[Any]:
        return selectors.resource_match(
            caller=run.caller,
            resource_type=resource_type,
            criteria=criteria,
            consent=run.consent,
            most=most,
        )

    return matches


def _conditional_write(run: _Run, plan: EntryPlan, criteria: str) -> dict[str, Any]:
    """A PUT, PATCH or DELETE entry on `Type?criteria`, through the same services as REST."""
    if plan.interaction == Interaction.UPDATE:
        result = services.resource_update_conditional(
            resource_type=plan.resource_type,
            query=criteria,
            content=plan.resource,
            source=run.source,
            matches=_visible_matcher(run),
            update_creates=run.caller.tenant.fhir_update_creates,
            if_match=plan.if_match,
        )
        return run.written(result.resource, "201 Created" if result.created else "200 OK")
    if plan.interaction == Interaction.PATCH:
        patched = services.resource_patch_conditional(
            resource_type=plan.resource_type,
            query=criteria,
            patch=_patch_operations(plan.resource),
            source=run.source,
            matches=_visible_matcher(run),
            if_match=plan.if_match,
        )
        return run.written(patched, "200 OK")
    deleted = services.resource_delete_conditional(
        resource_type=plan.resource_type,
        query=criteria,
        matches=_visible_matcher(run),
        if_match=plan.if_match,
    )
    for resource in deleted:
        run.seen(resource.compartment)
    return {"response": {"status": "204 No Content"}}


def _execute(run: _Run, plan: EntryPlan) -> dict[str, Any]:
    _check_scope(run.caller, plan)
    kind = plan.interaction
    if plan.criteria is not None:
        return _conditional_write(run, plan, plan.criteria)
    if kind == Interaction.CREATE:
        if plan.if_none_exist:
            result = services.resource_create_conditional(
                resource_type=plan.resource_type,
                content=plan.resource,
                source=run.source,
                query=plan.if_none_exist,
                logical_id=plan.assigned_id,
                matches=_matcher(run.caller),
            )
            if result.created:
                return run.written(result.resource, "201 Created")
            if selectors.match_disclosable(
                caller=run.caller, match=result.resource, consent=run.consent
            ):
                return run.written(result.resource, "200 OK")
            # Matched, nothing created; nothing in the entry names the match.
            return {"response": {"status": "200 OK"}}
        created = services.resource_create(
            resource_type=plan.resource_type,
            content=plan.resource,
            source=run.source,
            logical_id=plan.assigned_id,
        )
        return run.written(created, "201 Created")
    assert plan.logical_id is not None
    if kind == Interaction.UPDATE:
        result = services.resource_put(
            resource_type=plan.resource_type,
            logical_id=plan.logical_id,
            content=plan.resource,
            source=run.source,
            update_creates=run.caller.tenant.fhir_update_creates,
            if_match=plan.if_match,
        )
        return run.written(result.resource, "201 Created" if result.created else "200 OK")
    if kind == Interaction.PATCH:
        patched = services.resource_patch(
            resource_type=plan.resource_type,
            logical_id=plan.logical_id,
            patch=_patch_operations(plan.resource),
            source=run.source,
            if_match=plan.if_match,
        )
        return run.written(patched, "200 OK")
    if kind == Interaction.DELETE:
        deleted = services.resource_delete(
            resource_type=plan.resource_type, logical_id=plan.logical_id, if_match=plan.if_match
        )
        run.seen(deleted.compartment)
        return {"response": {"status": "204 No Content"}}
    if kind == Interaction.VREAD:
        assert plan.version_id is not None
        version = selectors.resource_vread(
            resource_type=plan.resource_type,
            logical_id=plan.logical_id,
            version_id=plan.version_id,
            consent=run.consent,
        )
        return run.written(version, "200 OK", shown=False, location=False) | {
            "resource": version.content.parsed()
        }
    read = selectors.resource_read(
        resource_type=plan.resource_type, logical_id=plan.logical_id, consent=run.consent
    )
    if plan.if_none_match is not None and plan.if_none_match == read.version_id:
        return {"response": {"status": "304 Not Modified", "etag": etag(read.version_id)}}
    return run.written(read, "200 OK", shown=False, location=False) | {
        "resource": read.content.parsed()
    }


def _search_entry(run: _Run, plan: EntryPlan) -> dict[str, Any]:
    # search_bundle checks the scopes of every type the search reaches, this one included.
    bundle = search_bundle(
        caller=run.caller,
        resource_type=plan.resource_type,
        params=plan.query,
        base_url=run.base_url,
        strict=False,
        consent=run.consent,
        as_stored=True,
        seen=run.seen,
    )
    return {"resource": bundle, "response": {"status": "200 OK"}}


def _entry_run(run: _Run, plan: EntryPlan) -> dict[str, Any]:
    if plan.interaction == Interaction.SEARCH:
        return _search_entry(run, plan)
    return _execute(run, plan)


# Ids are assigned before anything runs so that every entry, whatever its position, can
# refer to any other; the whole run is one atomic block, and the first FhirError unwinds it
# (the request's transaction when there is one: a savepoint would add two round trips).
def _transaction(run: _Run, plans: list[EntryPlan]) -> list[dict[str, Any]]:
    id_map: dict[str, str] = {}
    for plan in plans:
        if plan.interaction == Interaction.CREATE:
            plan.assigned_id = services.new_logical_id()
            if plan.full_url:
                id_map[plan.full_url] = f"{plan.resource_type}/{plan.assigned_id}"
        elif plan.logical_id and plan.full_url:
            id_map[plan.full_url] = f"{plan.resource_type}/{plan.logical_id}"
    results: dict[int, dict[str, Any]] = {}
    with transaction.atomic(savepoint=False):
        # Conditional creates that match an existing resource point their fullUrl at it.
        # Their criteria stay locked until the commit, so what was matched here is still
        # what the entry finds when it runs.
        for plan in plans:
            if plan.interaction == Interaction.CREATE and plan.if_none_exist:
                try:
                    _check_scope(run.caller, plan)
                    found = services.resource_match_locked(
                        resource_type=plan.resource_type,
                        query=plan.if_none_exist,
                        matches=_matcher(run.caller),
                    )
                except FhirError as error:
                    raise _entry_error(plan.index, error) from None
                if found and plan.full_url:
                    id_map[plan.full_url] = f"{plan.resource_type}/{found[0].logical_id}"
        for plan in sorted(plans, key=lambda p: (METHOD_ORDER[p.method], p.index)):
            if id_map and plan.resource is not None:
                plan.resource = references_rewrite(plan.resource, id_map)
            try:
                results[plan.index] = _entry_run(run, plan)
            except FhirError as error:
                raise _entry_error(plan.index, error) from None
    return [results[plan.index] for plan in plans]


def _batch(run: _Run, plans: list[EntryPlan]) -> list[dict[str, Any]]:
    results: dict[int, dict[str, Any]] = {}
    for plan in sorted(plans, key=lambda p: (METHOD_ORDER[p.method], p.index)):
        try:
            # A savepoint per entry: a failing entry undoes only its own partial writes.
            with transaction.atomic():
                results[plan.index] = _entry_run(run, plan)
        except FhirError as error:
            results[plan.index] = _failed(_entry_error(plan.index, error))
        except Exception as error:
            if database_fault(error) is not None:
                raise  # a lost conflict or outage: the request's transaction, undone whole
            # An entry the server could not process fails alone, like any other failing
            # entry: its savepoint is undone, the others keep their outcomes, and the
            # batch still answers 200 (so an Idempotency-Key replays it, never re-runs it).
            logger.exception("Bundle.entry[%d] failed on the server", plan.index)
            results[plan.index] = _failed(
                FhirError(
                    500,
                    IssueCode.EXCEPTION,
                    f"Bundle.entry[{plan.index}]: the server could not process this entry; "
                    "nothing of it was stored",
                    expression=[f"Bundle.entry[{plan.index}]"],
                )
            )
    return [results[plan.index] for plan in plans]


def _failed(error: FhirError) -> dict[str, Any]:
    return {"response": {"status": str(error.status), "outcome": operation_outcome(*error.issues)}}


def bundle_process(
    *,
    caller: Caller,
    planned: BundlePlan,
    base_url: str,
    source: str,
    consent: "ConsentGuard",
    seen: Callable[[list[str]], None],
    representation: bool = False,
) -> dict[str, Any]:
    """Run a Bundle planned by `bundle_plan` and return its response Bundle. Its reads and
    searches are decided by the caller's consent guard like the REST interactions; `seen`
    is told the patients of every resource its entries show or write."""
    runner = _transaction if planned.kind == BundleKind.TRANSACTION else _batch
    run = _Run(caller, base_url, source, representation, consent, seen)
    entries = runner(run, planned.entries)
    return {
        "resourceType": "Bundle",
        "type": f"{planned.kind}-response",
        "meta": {"lastUpdated": instant_text(now_instant())},
        "entry": entries,
    }
