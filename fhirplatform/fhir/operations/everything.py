"""Patient/$everything: the patient's compartment, the Patient first, one page at a time.

The compartment is what the store already records for consent: every row's
`compartment` column (fhirplatform/fhir/compartments.py), so one indexed filter finds it
and the consent guard leaves out what it denies in SQL, exactly as for a search. Pages
are cut by keyset and carry a cursor of the one signed scheme (fhirplatform/fhir/paging.py).
"""

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from django.db.models import Case, IntegerField, Q, QuerySet, Value, When

from fhirplatform.errors import FhirError, IssueCode
from fhirplatform.fhir.compartments import PATIENT, PATIENT_DATA_TYPES
from fhirplatform.fhir.models import Resource
from fhirplatform.fhir.paging import cursor_digest, cursor_invalid, cursor_make, cursor_read
from fhirplatform.fhir.search.keyset import with_stored_text
from fhirplatform.resource_types import R4_RESOURCE_TYPES
from tenants.scopes import Interaction, scope_require, scopes_allow
from tenants.tokens import Caller

if TYPE_CHECKING:
    from consent.enforcement import ConsentGuard


@dataclass(frozen=True)
class EverythingQuery:
    patient_id: str
    resource_types: tuple[str, ...]  # sorted
    since: datetime | None
    count: int

    def digest(self) -> str:
        # Everything that shapes the result, not the page size: a cursor replays only here.
        since = self.since.isoformat() if self.since else None
        return cursor_digest("everything", self.patient_id, self.resource_types, since)


@dataclass(frozen=True)
class EverythingPage:
    rows: list[Resource]
    next_cursor: str | None


def everything_types(*, caller: Caller, requested: str | None) -> tuple[str, ...]:
    """The types the answer may hold: those `_type` names (each an R4 type of the
    compartment the caller may search: 400 / 403 otherwise, as a search's `_type`), or
    without it every compartment type the caller's scopes let it search. The Patient
    itself needs read, which the pipeline checked already."""
    if requested is None:
        return tuple(
            sorted(
                t
                for t in PATIENT_DATA_TYPES
                if t == PATIENT or scopes_allow(caller.scopes, t, Interaction.SEARCH)
            )
        )
    names = sorted({name for name in requested.split(",") if name})
    unknown = [name for name in names if name not in R4_RESOURCE_TYPES]
    outside = [
        name for name in names if name in R4_RESOURCE_TYPES and name not in PATIENT_DATA_TYPES
    ]
    if not names or unknown or outside:
        raise FhirError(
            400,
            IssueCode.VALUE,
            "_type must name types of the Patient compartment"
            + (
                f"; not such types: {', '.join(n[:64] for n in unknown + outside)}" if names else ""
            ),
            expression=["_type"],
        )
    for name in names:
        if name != PATIENT:
            scope_require(scopes=caller.scopes, resource_type=name, interaction=Interaction.SEARCH)
    return tuple(names)


def _ordered(query: EverythingQuery, consent: "ConsentGuard") -> QuerySet[Resource]:
    """The compartment's current resources the caller may see, the Patient first (rank 0),
    then in row order."""
    rows = Resource.objects.filter(
        deleted=False,
        resource_type__in=query.resource_types,
        compartment__contains=[query.patient_id],
    )
    if query.since is not None:
        rows = rows.filter(last_updated__gte=query.since)
    rows = consent.visible(rows, resource_types=query.resource_types)
    first = When(resource_type=PATIENT, logical_id=query.patient_id, then=Value(0))
    rank = Case(first, default=Value(1), output_field=IntegerField())
    return with_stored_text(rows).annotate(rank=rank).order_by("rank", "pk")


def everything_page(
    *, caller: Caller, query: EverythingQuery, cursor: str | None, consent: "ConsentGuard"
) -> EverythingPage:
    """One page of the patient's compartment, where `cursor` points (the first without).

    A patient that does not exist, or whose resources the caller's consent decision
    denies, gives what a search denied them gives: no entries (never a 404, which would
    tell a denied caller that the patient exists)."""
    rows = _ordered(query, consent)
    if cursor is not None:
        position = cursor_read(caller=caller, cursor=cursor, digest=query.digest())
        try:
            rank, pk = int(position["r"]), int(position["i"])
        except (KeyError, TypeError, ValueError):
            raise cursor_invalid() from None
        rows = rows.filter(Q(rank__gt=rank) | Q(rank=rank, pk__gt=pk))
    # One row more than the page says whether another page follows, without a COUNT(*).
    found = list(rows[: query.count + 1])
    page = found[: query.count]
    next_cursor = None
    if len(found) > query.count and page:
        edge = page[-1]
        position = {"r": edge.rank, "i": edge.pk}  # type: ignore[attr-defined]
        next_cursor = cursor_make(caller=caller, digest=query.digest(), position=position)
    return EverythingPage(rows=page, next_cursor=next_cursor)
