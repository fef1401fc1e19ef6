"""The consent decision as a SQL condition, for searches: what to leave out.

A resource's decision depends only on its type, its patients, and its security labels
through the labels that can matter: the policy's explicit labels and those its patients'
provisions match on (the patient's label universe U). So, per searched type:

- resources with no patient, or with a patient who has no Consent, are decided by the
  policy alone: for each subset s of the explicit labels, decide once;
- each patient with Consents is decided for each subset s of U (a few: U is small).

A resource is excluded when one of its patients (or the policy, for a resource with none)
denies it for the subset of U its labels hold. Patients denying the same subsets of the
same U are grouped into one `compartment && ARRAY[...]` condition, so the SQL grows with
the number of distinct consent situations, not of patients. The result is memoised in the
tenant's snapshot until the next provision period edge.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import reduce
from itertools import combinations
from operator import or_
from typing import TYPE_CHECKING

from django.db.models import Q

from consent.codes import DecisionBasis

if TYPE_CHECKING:
    from consent.enforcement import ConsentGuard

# A patient whose provisions match on more labels than this has every resource of the
# searched type left out (fail safe): 2^12 decisions per patient is the most we spend.
MAX_LABEL_UNIVERSE = 12
_MEMO_ENTRIES = 256

_Subsets = frozenset[frozenset[str]]


@dataclass(frozen=True)
class Exclusion:
    """What a search leaves out: everything, or the rows `q` matches (None: nothing)."""

    everything: bool = False
    q: Q | None = None


def consent_exclusion(*, guard: "ConsentGuard", resource_types: Sequence[str]) -> Exclusion:
    snapshot = guard.snapshot
    key = (guard.client_id, guard.partner, guard.purpose, tuple(sorted(resource_types)))
    memo = snapshot.memo.get(key)
    if memo is not None and (memo[0] is None or guard.now < memo[0]):
        guard.settles_by(memo[0])
        return memo[1]  # type: ignore[no-any-return]
    if all(_plan_everything(guard, resource_type) for resource_type in resource_types):
        exclusion = Exclusion(everything=True)
    else:
        # Types decided alike share one condition: a system search spans every type.
        by_plan: dict[_Plan, list[str]] = {}
        for resource_type in resource_types:
            by_plan.setdefault(_type_plan(guard, resource_type), []).append(resource_type)
        conditions = [
            Q(resource_type__in=types) & condition
            for plan, types in by_plan.items()
            if (condition := _plan_condition(guard, plan)) is not None
        ]
        exclusion = Exclusion(q=reduce(or_, conditions) if conditions else None)
    if len(snapshot.memo) >= _MEMO_ENTRIES:
        snapshot.memo.clear()
    snapshot.memo[key] = (guard.settled_until(), exclusion)
    return exclusion


# How one type is decided: the explicit-label subsets the policy denies (for resources
# without a consented patient), and per (label universe, denied subsets) the patients.
_Plan = tuple[_Subsets, tuple[tuple[frozenset[str], _Subsets, tuple[str, ...]], ...]]


def _type_plan(guard: "ConsentGuard", resource_type: str) -> _Plan:
    snapshot = guard.snapshot
    snapshot.patients_load()
    explicit = snapshot.policy.explicit_labels
    default_denied = _denied_subsets(guard, resource_type, None, explicit)
    groups: dict[tuple[frozenset[str], _Subsets], list[str]] = {}
    for patient_id in sorted(snapshot.consented):
        universe = explicit | snapshot.patient(patient_id).labels
        if len(universe) > MAX_LABEL_UNIVERSE:
            groups.setdefault((frozenset(), frozenset({frozenset()})), []).append(patient_id)
            continue
        denied = _denied_subsets(guard, resource_type, patient_id, universe)
        if denied:
            groups.setdefault((universe, denied), []).append(patient_id)
    return default_denied, tuple(
        (universe, denied, tuple(patients)) for (universe, denied), patients in groups.items()
    )


def _plan_everything(guard: "ConsentGuard", resource_type: str) -> bool:
    """Whether every resource of the type is left out: the purpose of use is not allowed,
    which the engine decides before anything else."""
    decision = guard.decide(resource_type=resource_type, patients=[], labels=())
    return decision.basis is DecisionBasis.POLICY_PURPOSE


def _plan_condition(guard: "ConsentGuard", plan: _Plan) -> Q | None:
    default_denied, groups = plan
    conditions: list[Q] = []
    explicit = guard.snapshot.policy.explicit_labels
    condition = _labels_condition(default_denied, explicit)
    if condition is not None:
        # No patient, or one patient at least without any Consent.
        consented = sorted(guard.snapshot.consented)
        without_consent = Q(compartment=[]) | ~Q(compartment__contained_by=consented)
        conditions.append(
            without_consent if condition is _EVERYTHING else without_consent & condition
        )
    for universe, denied, patients in groups:
        condition = _labels_condition(denied, universe)
        assert condition is not None  # a group holds patients who deny something
        named = Q(compartment__overlap=list(patients))
        conditions.append(named if condition is _EVERYTHING else named & condition)
    return reduce(or_, conditions) if conditions else None


# A marker for "whatever the labels": compared by identity, never used as a filter.
_EVERYTHING = Q(pk__isnull=False)


def _denied_subsets(
    guard: "ConsentGuard", resource_type: str, patient_id: str | None, universe: frozenset[str]
) -> _Subsets:
    """The subsets of `universe` for which a resource of this patient is denied."""
    patients = [patient_id] if patient_id else []
    return frozenset(
        labels
        for labels in _subsets(universe)
        if not guard.decide(resource_type=resource_type, patients=patients, labels=labels).permitted
    )


def _subsets(universe: frozenset[str]) -> Iterable[frozenset[str]]:
    items = sorted(universe)
    for size in range(len(items) + 1):
        for chosen in combinations(items, size):
            yield frozenset(chosen)


def _labels_condition(denied: _Subsets, universe: frozenset[str]) -> Q | None:
    """Rows whose labels, within `universe`, are exactly one of the denied subsets."""
    if not denied:
        return None
    if len(denied) == 2 ** len(universe):
        return _EVERYTHING
    exact = [_exactly(labels, universe - labels) for labels in sorted(denied, key=sorted)]
    return reduce(or_, exact)


def _exactly(present: frozenset[str], absent: frozenset[str]) -> Q:
    condition = Q(security_labels__contains=sorted(present)) if present else None
    if absent:
        missing = ~Q(security_labels__overlap=sorted(absent))
        condition = missing if condition is None else condition & missing
    assert condition is not None  # present and absent split a non-empty universe
    return condition
