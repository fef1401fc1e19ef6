"""FHIR search: query parameters in, a searchset Bundle out.

The request is parsed (parsing.py), its criteria become EXISTS filters on the index
tables (query.py), one page is cut by a keyset cursor (keyset.py) and rendered with its
includes and links (searchset.py).
"""

from collections.abc import Callable
from functools import cache as cache_once
from typing import TYPE_CHECKING, Any

from django.db.models import QuerySet

from fhirplatform.errors import FhirError, IssueCode
from fhirplatform.fhir.compartments import PatientScope, criterion_patients
from fhirplatform.fhir.models import Resource
from fhirplatform.fhir.search.keyset import page_read
from fhirplatform.fhir.search.parsing import SearchRequest, search_parse
from fhirplatform.fhir.search.query import chain_filter, column_filter, index_filter
from fhirplatform.fhir.search.registry import Column
from fhirplatform.fhir.search.searchset import searchset_entries, searchset_link
from fhirplatform.fhir.search.semantic import SearchMemo
from fhirplatform.resource_types import STORED_RESOURCE_TYPES
from tenants.scopes import Interaction, scope_require, scopes_allow
from tenants.tokens import Caller

if TYPE_CHECKING:
    from consent.enforcement import ConsentGuard
    from fhirplatform.fhir.caching import SearchCache


def _system_scope_check(caller: Caller, request: SearchRequest) -> None:
    """System-level search must name its types in _type, each one the client may search."""
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


def _hops_scope_check(caller: Caller, request: SearchRequest) -> None:
    """Every type a search reaches needs the caller's search scope on it: the searched type
    (also when the search is a conditional create's match), and each chain's targets.

    A chain filters by what the target holds, so without this an Observation-only client
    could learn Patients' birthdates through `subject:Patient.birthdate`. A chain that may
    reach several types needs all of them; naming the type (`subject:Patient.x`) narrows it.
    _include/_revinclude are not refused: what they would add is left out instead
    (searchset._included).
    """
    if request.system_level:
        _system_scope_check(caller, request)
    else:
        for resource_type in request.resource_types:
            scope_require(
                scopes=caller.scopes, resource_type=resource_type, interaction=Interaction.SEARCH
            )
    for chain in request.chains:
        for target in chain.targets:
            scope_require(
                scopes=caller.scopes, resource_type=target, interaction=Interaction.SEARCH
            )


def _matching(
    request: SearchRequest, base_url: str, consent: "ConsentGuard | None"
) -> QuerySet[Resource]:
    """Current resources that meet every criterion and chain of the request, and that the
    caller's consent decision permits (left out in SQL, so totals and pages agree)."""
    queryset = Resource.objects.filter(deleted=False)
    if request.resource_types:
        queryset = queryset.filter(resource_type__in=request.resource_types)
    types = request.resource_types or sorted(STORED_RESOURCE_TYPES)
    for criterion, parameter in request.criteria:
        if parameter is None:
            queryset = queryset.filter(column_filter(Column(criterion.name), criterion))
        else:
            queryset = queryset.filter(
                index_filter(
                    parameter=parameter,
                    criterion=criterion,
                    resource_types=types,
                    base_url=base_url,
                )
            )
    for chain in request.chains:
        queryset = queryset.filter(
            chain_filter(chain=chain, resource_types=types, base_url=base_url)
        )
    if consent is not None:
        queryset = consent.visible(queryset, resource_types=types)
    return queryset


def search_matches(
    *,
    caller: Caller | None,
    request: SearchRequest,
    base_url: str,
    consent: "ConsentGuard | None",
) -> QuerySet[Resource]:
    """The current resources a parsed search matches and the caller's consent decision
    permits, its scopes checked as search_bundle checks them: for what selects with search
    criteria and shapes its own answer (Observation/$lastn, conditional writes). `caller`
    None: the platform matching for itself (the bulk loader), no scope to check; `consent`
    None: nothing left out."""
    if caller is not None:
        _hops_scope_check(caller, request)
    return _matching(request, base_url.rstrip("/"), consent)


def _types_reached(request: SearchRequest) -> set[str]:
    """The types its chains reach and what it includes ("*" when an _include or
    _revinclude may reach any type)."""
    types: set[str] = set()
    for chain in request.chains:
        types |= set(chain.targets)
    for _source, _, target in request.includes:
        types.add(target or "*")
    for source, _, _ in request.revincludes:
        types.add(source)
    return types


def _types_touched(request: SearchRequest) -> set[str]:
    """The searched types ("*" when the search spans every type) and those it reaches."""
    return (set(request.resource_types) or {"*"}) | _types_reached(request)


def _patients_scoping(request: SearchRequest, base_url: str) -> PatientScope | None:
    """The patients every match of a one-type search is in the compartment of, when one of
    its criteria says so (`Observation?patient=x`) and nothing else of the search reads
    that type; None when it may find anyone's."""
    if request.system_level or len(request.resource_types) != 1:
        return None
    searched = request.resource_types[0]
    reached = _types_reached(request)
    if searched in reached or "*" in reached:
        return None
    for criterion, parameter in request.criteria:
        patients = criterion_patients(
            resource_type=searched,
            parameter=parameter,
            modifier=criterion.modifier,
            values=criterion.values,
            base_url=base_url,
        )
        if patients is not None:
            return PatientScope(searched, patients)
    return None


def search_bundle(
    *,
    caller: Caller,
    resource_type: str | None,
    params: list[tuple[str, str]],
    base_url: str,
    strict: bool,
    consent: "ConsentGuard | None",
    as_stored: bool = False,
    cache: "SearchCache | None" = None,
    seen: "Callable[[list[str]], None] | None" = None,
) -> dict[str, Any]:
    """Run a search for `caller` and render the searchset Bundle (one page of it).

    `consent`: the caller's consent guard; None only where the platform itself matches
    (a conditional create's duplicate check), never for what a caller is shown.
    `as_stored`: the entries' resources are the JsonText of their stored JSON, which the
    response renders without parsing it (the REST views); else parsed dicts.
    `cache`: the response cache of the request, told every type whose data the answer
    depends on, and the semantic cache's store (semantic.py); None: not cached.
    `seen`: told the patients of every resource the page shows (matches and includes),
    for the request's audit event."""
    base = base_url.rstrip("/")
    request = search_parse(resource_type=resource_type, params=params, strict=strict)
    _hops_scope_check(caller, request)
    if cache is not None:
        cache.touches(_types_touched(request), scope=_patients_scoping(request, base))
    memo = SearchMemo(cache=cache, request=request)
    path = resource_type or ""

    @cache_once
    def matching() -> QuerySet[Resource]:
        # Built only when the semantic tier does not know the answer: building the
        # criteria and the consent exclusion is most of what a search costs in Python.
        return _matching(request, base, consent)

    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if request.summary_count or request.count == 0:  # _count=0 asks for the total only
        bundle["total"] = memo.total(lambda: matching().count())
        bundle["link"] = [searchset_link(relation="self", base=base, path=path, request=request)]
        return bundle
    page = page_read(caller=caller, matching=matching, request=request, memo=memo)
    cursors = {"self": request.cursor, "next": page.next_cursor, "previous": page.previous_cursor}
    bundle["link"] = [
        searchset_link(relation=relation, base=base, path=path, request=request, cursor=cursor)
        for relation, cursor in cursors.items()
        if relation == "self" or cursor
    ]
    if request.total_accurate:
        bundle["total"] = memo.total(lambda: matching().count())
    elif request.cursor is None and page.next_cursor is None:
        bundle["total"] = len(page.rows)  # the whole result is on this page: counting is free
    entries = searchset_entries(
        caller=caller,
        request=request,
        rows=page.rows,
        base=base,
        as_stored=as_stored,
        consent=consent,
        memo=memo,
        seen=seen,
    )
    if entries:
        bundle["entry"] = entries
    return bundle
