"""audit_verify: everything the trail holds, computed again.

In the current schema, in this order, stopping at nothing (every problem is listed; the
first is what the command names):

1. the seals: numbered 1, 2, ... without a gap, each naming the previous one's digest and
   chain, and each digest computed again from what the seal holds;
2. each seal's block: its entries at positions 0..count-1, chained from the seal's
   `chain_before` to its `chain`; each entry's event present, with the digest it was
   sealed with;
3. every event: its digest computed again from its fields; an event of a transaction that
   ended before the last seal's horizon but is in no seal was not written by the sealer's
   application (inserted); later ones are the unsealed tail, counted.
"""

import time
from dataclasses import dataclass, field
from typing import Any

from audit.chain import GENESIS, link, seal_digest
from audit.digests import event_digest
from audit.models import AuditEvent, AuditSeal, AuditSealEntry

_CHUNK = 2000


@dataclass
class VerifyReport:
    schema: str
    events: int = 0
    seals: int = 0
    unsealed: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "ok": self.ok,
            "events": self.events,
            "seals": self.seals,
            "unsealed": self.unsealed,
            "first_problem": self.problems[0] if self.problems else None,
            "problems": self.problems,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.events_per_second),
        }


def _seals_check(report: VerifyReport) -> list[AuditSeal]:
    seals = list(AuditSeal.objects.order_by("seq"))
    chain, previous = GENESIS, ""
    for expected, seal in enumerate(seals, start=1):
        if seal.seq != expected:
            report.problems.append(f"seal {expected} is missing (found seal {seal.seq} next)")
        if seal.previous != previous or seal.chain_before != chain:
            report.problems.append(f"seal {seal.seq} does not follow seal {seal.seq - 1}")
        recomputed = seal_digest(seal)
        if recomputed != seal.digest:
            report.problems.append(f"seal {seal.seq} was altered")
        chain, previous = seal.chain, seal.digest
    report.seals = len(seals)
    return seals


def _blocks_check(
    report: VerifyReport, seals: list[AuditSeal], digests: dict[int, str]
) -> set[int]:
    """Each seal's block against the events' stored digests; returns the sealed ids."""
    entries: dict[int, list[AuditSealEntry]] = {}
    for entry in AuditSealEntry.objects.order_by("seal_seq", "position").iterator(_CHUNK):
        entries.setdefault(entry.seal_seq, []).append(entry)
    sealed: set[int] = set()
    for seal in seals:
        block = entries.pop(seal.seq, [])
        chain = seal.chain_before
        for position, entry in enumerate(block):
            if entry.position != position:
                report.problems.append(f"seal {seal.seq}: entry {position} is missing")
            stored = digests.get(entry.event_id)
            if stored is None:
                report.problems.append(f"event {entry.event_id} was deleted (seal {seal.seq})")
            elif stored != entry.digest:
                report.problems.append(
                    f"event {entry.event_id} is not the event sealed (seal {seal.seq}): "
                    "altered, replaced or moved"
                )
            chain = link(chain, entry.event_id, entry.digest)
            sealed.add(entry.event_id)
        if len(block) != seal.count or chain != seal.chain:
            report.problems.append(f"seal {seal.seq}: its block does not chain")
    for seq in entries:
        report.problems.append(f"entries name seal {seq}, which does not exist")
    return sealed


def audit_verify(*, schema: str) -> VerifyReport:
    """Verify the current schema's trail (`schema` names it in the report)."""
    started = time.perf_counter()
    report = VerifyReport(schema=schema)
    seals = _seals_check(report)
    horizon = seals[-1].horizon if seals else 0
    digests: dict[int, str] = {}
    xacts: dict[int, int] = {}
    fields = [f.name for f in AuditEvent._meta.concrete_fields]
    for row in AuditEvent.objects.order_by("id").values(*fields).iterator(_CHUNK):
        report.events += 1
        digests[row["id"]] = row["digest"]
        xacts[row["id"]] = row["xact"]
        if event_digest(row) != row["digest"]:
            report.problems.append(f"event {row['id']} was altered")
    sealed = _blocks_check(report, seals, digests)
    for event_id, xact in xacts.items():
        if event_id in sealed:
            continue
        if xact < horizon:
            report.problems.append(f"event {event_id} was inserted: in no seal")
        else:
            report.unsealed += 1
    report.problems.sort(key=_problem_order)
    report.seconds = time.perf_counter() - started
    return report


def _problem_order(problem: str) -> tuple[int, int]:
    """Events first, in id order, then seals and entries: the first is the one named."""
    kind, number = problem.split()[:2]
    order = {"event": 0, "seal": 1}.get(kind, 2)
    return order, int(number.rstrip(":")) if number.rstrip(":").isdigit() else 0
