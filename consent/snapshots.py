"""What the consent decision reads of a tenant, kept in-process between requests.

A snapshot holds the tenant's current policy, the set of patients that have any Consent,
and (filled as requests need them) those patients' Consents. It is valid under the two
generation tokens it was loaded under: the tenant's POLICY token (every policy edit bumps
it) and its CONSENT token (every Consent written bumps it), both bumped on commit by the
writing transaction (fhirplatform/cache/generations.py). The pipeline reads both tokens in
the round trip of its cache lookup, before it reads any tenant data, so:

- a snapshot is reused only while both tokens are unchanged: a Consent that commits and
  bumps before the lookup is always seen;
- data loaded under a token that is bumped meanwhile is at worst newer than its token,
  never older: the next request sees the new token and loads afresh;
- with no tokens (Redis unreachable) every request reads PostgreSQL: still correct;
- should a bump be lost (Redis failing for the writer alone), a snapshot is still never
  older than CONSENT_SNAPSHOT_MAX_SECONDS, and a process whose own bump failed drops its
  snapshots at once.
"""

import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings

from consent.decision import ConsentPolicy
from consent.provisions import consent_edges, consent_labels
from consent.selectors import (
    consented_patients,
    consents_by_patient,
    patient_consents,
    policy_current,
)
from fhirplatform.cache.generations import generations_local_epoch


@dataclass(frozen=True)
class PatientConsents:
    """One patient's current Consents, with what a decision on them can depend on."""

    consents: tuple[Mapping[str, Any], ...]
    labels: frozenset[str]  # security labels their provisions match on
    edges: tuple[datetime, ...]  # instants where one of their provisions' periods turns


_NONE = PatientConsents((), frozenset(), ())


def _patient_consents(consents: Iterable[Mapping[str, Any]]) -> PatientConsents:
    held = tuple(consents)
    return PatientConsents(
        consents=held,
        labels=frozenset().union(*(consent_labels(consent=c) for c in held)),
        edges=tuple(edge for c in held for edge in consent_edges(consent=c)),
    )


@dataclass
class ConsentSnapshot:
    policy: ConsentPolicy
    consented: frozenset[str]  # patients with any current Consent
    tokens: tuple[str, str] | None  # (policy, consent) tokens; None: read without them
    local_epoch: int
    loaded_at: float = field(default_factory=time.monotonic)
    _patients: dict[str, PatientConsents] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # Memo of the consent filters built for searches (consent/filters.py), by caller and types.
    memo: dict[Any, Any] = field(default_factory=dict)

    def patient(self, patient_id: str) -> PatientConsents:
        """The patient's Consents; read from the database on first use in this snapshot."""
        if patient_id not in self.consented:
            return _NONE
        found = self._patients.get(patient_id)
        if found is None:
            found = _patient_consents(patient_consents(patient_id=patient_id))
            with self._lock:
                self._patients[patient_id] = found
        return found

    def patients_load(self) -> None:
        """Every consented patient's Consents, in one statement, unless all are held: a
        search's consent filter reads them all."""
        if len(self._patients) >= len(self.consented):
            return
        loaded = {
            patient_id: _patient_consents(consents)
            for patient_id, consents in consents_by_patient().items()
            if patient_id in self.consented
        }
        with self._lock:
            for patient_id, found in loaded.items():
                self._patients.setdefault(patient_id, found)

    def fresh(self, tokens: tuple[str, str] | None) -> bool:
        return (
            tokens is not None
            and tokens == self.tokens
            and self.local_epoch == generations_local_epoch()
            and time.monotonic() - self.loaded_at < settings.CONSENT_SNAPSHOT_MAX_SECONDS
        )


_snapshots: dict[str, ConsentSnapshot] = {}


def consent_snapshot(*, tenant_schema: str, tokens: tuple[str, str] | None) -> ConsentSnapshot:
    """The tenant's snapshot under `tokens` (policy, consent), loaded when this process
    holds none that is fresh. Runs in the tenant's schema."""
    snapshot = _snapshots.get(tenant_schema)
    if snapshot is not None and snapshot.fresh(tokens):
        return snapshot
    # The epoch is read before the load, like the tokens: a failed bump during it drops it.
    local_epoch = generations_local_epoch()
    snapshot = ConsentSnapshot(
        policy=policy_current(),
        consented=consented_patients(),
        tokens=tokens,
        local_epoch=local_epoch,
    )
    if tokens is not None:
        _snapshots[tenant_schema] = snapshot
    return snapshot


def consent_snapshots_clear() -> None:
    """Forget every snapshot (tests, and a process told its view may be stale)."""
    _snapshots.clear()
