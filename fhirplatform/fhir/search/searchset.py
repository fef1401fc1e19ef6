"""Building the searchset Bundle: match entries shaped by _elements/_summary, the
_include/_revinclude entries of the page, the outcome entry, and the page links."""

from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from django.db.models import Q, Subquery

from fhirplatform.errors import Issue, IssueCode, Severity, operation_outcome
from fhirplatform.fhir.http import JsonText
from fhirplatform.fhir.models import Resource
from fhirplatform.fhir.numbers import exact_loads
from fhirplatform.fhir.paging import CURSOR_PARAM
from fhirplatform.fhir.search.keyset import with_stored_text
from fhirplatform.fhir.search.models import ReferenceIndex
from fhirplatform.fhir.search.parsing import SearchRequest
from tenants.scopes import Interaction, scopes_allow
from tenants.tokens import Caller

if TYPE_CHECKING:
    from consent.enforcement import ConsentGuard
    from fhirplatform.fhir.search.semantic import SearchMemo

MAX_INCLUDED = 1000
SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
}


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


def _entry(
    base: str, resource: Resource, mode: str, request: SearchRequest, as_stored: bool
) -> dict[str, Any]:
    text: str = resource.content_text  # type: ignore[attr-defined]
    content: dict[str, Any] | JsonText
    if mode == "match" and (request.elements or request.summary_data):
        content = _shape(exact_loads(text), request)
    else:
        content = JsonText(text) if as_stored else exact_loads(text)
    return {
        "fullUrl": f"{base}/{resource.resource_type}/{resource.logical_id}",
        "resource": content,
        "search": {"mode": mode},
    }


def _included(
    caller: Caller,
    request: SearchRequest,
    matches: list[Resource],
    consent: "ConsentGuard | None",
) -> list[Resource]:
    """_include targets and _revinclude sources of the page (which has rows, and includes
    to resolve: searchset_entries asks only then), deduplicated, within scope and permitted
    by the caller's consent decision."""
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
    candidates = with_stored_text(Resource.objects.filter(wanted, deleted=False))
    for resource in candidates.order_by("pk")[:MAX_INCLUDED]:
        if resource.pk in seen or not scopes_allow(
            caller.scopes, resource.resource_type, Interaction.READ
        ):
            continue
        if consent is not None and not consent.permits(
            resource_type=resource.resource_type,
            patients=resource.compartment,
            labels=resource.security_labels,
        ):
            continue
        seen.add(resource.pk)
        included.append(resource)
    return included


def searchset_entries(
    *,
    caller: Caller,
    request: SearchRequest,
    rows: list[Resource],
    base: str,
    as_stored: bool,
    consent: "ConsentGuard | None",
    memo: "SearchMemo",
    seen: "Callable[[list[str]], None] | None" = None,
) -> list[dict[str, Any]]:
    """The page's matches, what they include, and an outcome naming ignored parameters.

    `as_stored`: each resource as the JsonText PostgreSQL returned, for the response
    (shaped ones by _elements/_summary aside); else parsed, for a caller that reads it.
    `memo`: the search's semantic cache, which may know what the page includes.
    `seen`: told the patients of each resource shown (the audit event's)."""
    entries = [_entry(base, r, "match", request, as_stored) for r in rows]
    included = (
        memo.included(rows, lambda: _included(caller, request, rows, consent))
        if rows and (request.includes or request.revincludes)
        else []
    )
    entries += [_entry(base, r, "include", request, as_stored) for r in included]
    if seen is not None:
        for row in (*rows, *included):
            seen(row.compartment)
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
    return entries


def searchset_link(
    *, relation: str, base: str, path: str, request: SearchRequest, cursor: str | None = None
) -> dict[str, str]:
    """A page link: the parameters that were used (canonical), and the page's cursor."""
    query = list(request.used) + ([(CURSOR_PARAM, cursor)] if cursor else [])
    url = f"{base}/{path}?{urlencode(query)}" if query else f"{base}/{path}"
    return {"relation": relation, "url": url}
