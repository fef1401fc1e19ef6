"""The consent decision applied to one request: the guard the FHIR selectors consult.

A resource is decided by its row: the patients whose compartment it is in and its
security labels (columns written with every version, fhirplatform/fhir/compartments.py).
A resource in several patients' compartments is shown only if every one of them permits
it; one in none follows the tenant policy. Searches leave denied resources out in SQL
(consent/filters.py), so Bundle.total and paging never count them.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from django.db.models import Model, QuerySet

from consent.codes import CONSENT_REASON, DeniedAnswer
from consent.decision import ConsentRequest, Decision, consent_decide
from consent.filters import consent_exclusion
from consent.snapshots import ConsentSnapshot
from fhirplatform.errors import FhirError, IssueCode, not_found

# Resource and ResourceVersion rows: both carry compartment and security_labels.
_Row = TypeVar("_Row", bound=Model)


@dataclass
class ConsentGuard:
    """One caller's view through the tenant's consent snapshot, for one request."""

    snapshot: ConsentSnapshot
    tenant: str
    client_id: str
    partner: str
    purpose: str | None
    now: datetime
    denials: int = 0  # resources this request was denied, for the tenant's statistics
    # The last decision made, with what decided it: a read's, for its audit event.
    last_decision: Decision | None = None
    _decided: dict[tuple[str, tuple[str, ...], frozenset[str]], Decision] = field(
        default_factory=dict
    )
    # The next instant a provision period of a Consent this request consulted turns.
    _settled: datetime | None = None

    def decide(
        self, *, resource_type: str, patients: Sequence[str], labels: Iterable[str]
    ) -> Decision:
        """The decision for one resource; the first patient that denies decides."""
        label_set = frozenset(labels)
        key = (resource_type, tuple(patients), label_set)
        if (known := self._decided.get(key)) is not None:
            self.last_decision = known
            return known
        decision: Decision | None = None
        for patient_id in patients or (None,):
            consents: tuple[Any, ...] = ()
            if patient_id:
                found = self.snapshot.patient(patient_id)
                consents = found.consents
                self.settles_by(min((e for e in found.edges if e > self.now), default=None))
            decision = consent_decide(
                policy=self.snapshot.policy,
                request=ConsentRequest(
                    tenant=self.tenant,
                    client_id=self.client_id,
                    partner=self.partner,
                    purpose=self.purpose,
                    patient_id=patient_id,
                    resource_type=resource_type,
                    security_labels=label_set,
                ),
                consents=consents,
                now=self.now,
            )
            if not decision.permitted:
                break
        assert decision is not None
        self._decided[key] = decision
        self.last_decision = decision
        return decision

    def permits(
        self, *, resource_type: str, patients: Sequence[str], labels: Iterable[str]
    ) -> bool:
        """Whether the resource may be shown; a denial is counted."""
        permitted = self.decide(
            resource_type=resource_type, patients=patients, labels=labels
        ).permitted
        if not permitted:
            self.denials += 1
        return permitted

    def require(
        self, *, resource_type: str, patients: Sequence[str], labels: Iterable[str]
    ) -> None:
        """For a read: the denied answer unless the resource may be shown."""
        if not self.permits(resource_type=resource_type, patients=patients, labels=labels):
            raise self.denied_answer()

    def denied_answer(self) -> FhirError:
        """The shared 404, unless the tenant's policy tells callers they were denied."""
        if self.snapshot.policy.denied_answer is DeniedAnswer.FORBIDDEN:
            return FhirError(
                403,
                IssueCode.FORBIDDEN,
                "Access to this resource is denied by the patient's consent or the tenant's "
                "consent policy",
                reason=CONSENT_REASON,
            )
        return not_found()

    def visible(self, rows: QuerySet[_Row], *, resource_types: Sequence[str]) -> QuerySet[_Row]:
        """`rows` (current resources or versions, of `resource_types`) without those the
        decision denies, left out in SQL (consent/filters.py)."""
        exclusion = consent_exclusion(guard=self, resource_types=resource_types)
        if exclusion.everything:
            return rows.none()
        return rows if exclusion.q is None else rows.exclude(exclusion.q)

    def may_deny(self, *, resource_types: Sequence[str]) -> bool:
        """Whether the decision leaves out any resource of these types (the same exclusion
        `visible` applies, so it costs nothing more): when not, nothing needs counting."""
        exclusion = consent_exclusion(guard=self, resource_types=resource_types)
        return exclusion.everything or exclusion.q is not None

    def settles_by(self, instant: datetime | None) -> None:
        """Note that what this request was decided on may change at `instant`."""
        if instant is not None and (self._settled is None or instant < self._settled):
            self._settled = instant

    def settled_until(self) -> datetime | None:
        """Until when every decision this request made stays as it is: the next instant a
        provision period of a Consent it consulted starts or ends (None: no such instant)."""
        return self._settled
