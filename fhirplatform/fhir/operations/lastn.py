"""Observation/$lastn: the most recent `max` Observations of each code, per patient.

The Observations are selected by the search machinery itself (parsing, criteria, scopes
and the consent guard's SQL exclusion: search.selectors.search_matches); this module only
ranks what it selected. A group is one patient (the `subject` reference) and one coding of
`Observation.code` (system and code, as the `code` index holds it); within it the most
recent by `effective[x]` (the `date` index, the end of a period) come first, Observations
without one last. An Observation coded twice may lead two groups: it is shown once.
"""

from django.conf import settings
from django.db.models import F, OuterRef, QuerySet, Subquery, Window
from django.db.models.functions import RowNumber

from fhirplatform.errors import FhirError, IssueCode
from fhirplatform.fhir.http import digits_parse
from fhirplatform.fhir.models import Resource
from fhirplatform.fhir.paging import CURSOR_PARAM
from fhirplatform.fhir.search.keyset import with_stored_text
from fhirplatform.fhir.search.models import DateIndex, ReferenceIndex, TokenIndex
from fhirplatform.fhir.search.parsing import Control, SearchRequest

OBSERVATION = "Observation"
MAX_PARAM = "max"
# The spec's required inputs: a subject, and a category or a code-bearing parameter.
_SUBJECT_PARAMS = frozenset({"patient", "subject"})
_CODE_PARAMS = frozenset({"category", "code", "code-value-concept", "combo-code"})
# The answer is every group's first `max`, ordered by group: there is no page to cut,
# size or sort, so these are refused rather than silently ignored.
_REFUSED = (CURSOR_PARAM, Control.COUNT, Control.SORT, Control.TOTAL)


def lastn_params(params: list[tuple[str, str]]) -> tuple[int, list[tuple[str, str]]]:
    """`max` (default 1; a positive integer up to FHIR_MAX_COUNT) and the search
    parameters that select the Observations."""
    maxes = [value for name, value in params if name == MAX_PARAM]
    if len(maxes) > 1:
        raise FhirError(400, IssueCode.VALUE, "max may be given once", expression=[MAX_PARAM])
    maximum = 1
    if maxes:
        parsed = digits_parse(maxes[0])
        if parsed is None or not 1 <= parsed <= settings.FHIR_MAX_COUNT:
            raise FhirError(
                400,
                IssueCode.VALUE,
                f"max must be an integer from 1 to {settings.FHIR_MAX_COUNT}, "
                f"got '{maxes[0][:32]}'",
                expression=[MAX_PARAM],
            )
        maximum = parsed
    for name, _ in params:
        if name in _REFUSED:
            raise FhirError(
                400,
                IssueCode.NOT_SUPPORTED,
                f"$lastn does not take {name}: it answers every group's most recent at once",
                expression=[name],
            )
    return maximum, [(name, value) for name, value in params if name != MAX_PARAM]


def lastn_check(request: SearchRequest) -> None:
    """The spec's SHALLs: a patient or subject, and a category or code criterion."""
    names = {criterion.name for criterion, _ in request.criteria}
    if not names & _SUBJECT_PARAMS:
        raise FhirError(
            400,
            IssueCode.REQUIRED,
            "$lastn needs the patient or subject parameter",
            expression=["patient"],
        )
    if not names & _CODE_PARAMS:
        raise FhirError(
            400,
            IssueCode.REQUIRED,
            "$lastn needs a category or code parameter",
            expression=["code"],
        )


def lastn_rows(*, matches: QuerySet[Resource], maximum: int) -> list[Resource]:
    """The most recent `maximum` of `matches` in each (patient, coding) group, grouped
    and newest first; 400 `too-costly` past FHIR_MAX_COUNT of them."""
    of_observation = {"resource_type": OBSERVATION, "resource_id": OuterRef("resource_id")}
    subject = ReferenceIndex.objects.filter(**of_observation, param="subject")
    effective = DateIndex.objects.filter(**of_observation, param="date").order_by("-high")
    ranked = (
        TokenIndex.objects.filter(
            resource_type=OBSERVATION, param="code", resource_id__in=matches.values("pk")
        )
        .annotate(
            subject=Subquery(subject.values("target_id")[:1]),
            effective=Subquery(effective.values("high")[:1]),
        )
        .annotate(
            rank=Window(
                RowNumber(),
                partition_by=[F("subject"), F("system"), F("code")],
                order_by=[F("effective").desc(nulls_last=True), F("resource_id").desc()],
            )
        )
        .filter(rank__lte=maximum)
        .order_by("subject", "system", "code", "rank")
    )
    cap = settings.FHIR_MAX_COUNT
    chosen = list(ranked.values_list("resource_id", flat=True)[: cap + 1])
    if len(chosen) > cap:
        raise FhirError(
            400,
            IssueCode.TOO_COSTLY,
            f"$lastn would answer more than {cap} Observations; narrow it by code, "
            "category or date",
        )
    ids = list(dict.fromkeys(chosen))
    found = with_stored_text(Resource.objects.all()).in_bulk(ids)
    return [found[pk] for pk in ids]
