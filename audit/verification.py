"""audit_verify: everything the trail holds, computed again.

In the current schema, in this order, stopping at nothing (every problem is listed; the
first is what the command names):

0. the archives on record (archiving.py): numbered 1, 2, ..., each taking the seals after
   the previous one's and naming its digest, each digest computed again; with `files`,
   every archive's file too: present, its sha256 the one recorded, and its seals and
   events checked as 1. and 2. check the live ones;
1. the seals: numbered on from the last archive's (1, 2, ... without one), each naming the
   previous one's digest and chain, and each digest computed again from what it holds;
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

from audit.archiving import archive_lines, archive_root, file_sha256, seal_from_dict
from audit.chain import Tip, archive_digest, link, seal_digest
from audit.digests import event_digest
from audit.models import AuditArchive, AuditEvent, AuditSeal, AuditSealEntry

_CHUNK = 2000


@dataclass
class VerifyReport:
    schema: str
    events: int = 0
    seals: int = 0
    unsealed: int = 0
    archives: int = 0
    archived_events: int = 0  # checked in their files (files=True)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def events_per_second(self) -> float:
        checked = self.events + self.archived_events
        return checked / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "ok": self.ok,
            "events": self.events,
            "seals": self.seals,
            "unsealed": self.unsealed,
            "archives": self.archives,
            "archived_events": self.archived_events,
            "first_problem": self.problems[0] if self.problems else None,
            "problems": self.problems,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.events_per_second),
        }


def _archives_check(report: VerifyReport) -> tuple[list[AuditArchive], Tip]:
    archives = list(AuditArchive.objects.order_by("seq"))
    tip, previous = Tip(), ""
    for expected, archive in enumerate(archives, start=1):
        where = f"archive {archive.seq}"
        if archive.seq != expected:
            report.problems.append(f"archive {expected} is missing (found archive {archive.seq})")
        if (
            archive.previous != previous
            or archive.first_seal != tip.seq
            or archive.chain_before != tip.chain
        ):
            report.problems.append(f"{where} does not follow what came before it")
        if archive_digest(archive) != archive.digest:
            report.problems.append(f"{where} was altered")
        previous = archive.digest
        tip = Tip(archive.last_seal + 1, archive.chain, archive.seal_digest, archive.horizon)
    report.archives = len(archives)
    return archives, tip


def _seal_follows(report: VerifyReport, seal: AuditSeal, tip: Tip, where: str) -> Tip:
    """One seal after `tip`: its number, its links and its own digest."""
    if seal.seq != tip.seq:
        report.problems.append(f"{where}seal {tip.seq} is missing (found seal {seal.seq} next)")
    if seal.previous != tip.previous or seal.chain_before != tip.chain:
        report.problems.append(f"{where}seal {seal.seq} does not follow seal {seal.seq - 1}")
    if seal_digest(seal) != seal.digest:
        report.problems.append(f"{where}seal {seal.seq} was altered")
    return Tip(seal.seq + 1, seal.chain, seal.digest, seal.horizon)


def _seals_check(report: VerifyReport, tip: Tip) -> tuple[list[AuditSeal], Tip]:
    seals = list(AuditSeal.objects.order_by("seq"))
    for seal in seals:
        tip = _seal_follows(report, seal, tip, "")
    report.seals = len(seals)
    return seals, tip


def _archive_file_check(report: VerifyReport, archive: AuditArchive) -> None:
    """An archive's file against its record: the bytes, then every seal and event in it,
    as the live ones are checked."""
    where = f"archive {archive.seq}: "
    path = archive_root() / archive.path
    if not path.is_file():
        report.problems.append(f"{where}its file {path} is missing")
        return
    if file_sha256(path) != archive.sha256:
        report.problems.append(f"{where}its file was altered (not the bytes archived)")
    seal, chain, position = None, "", 0
    try:
        lines = archive_lines(path)
        header = next(lines)["archive"]
        recorded = (archive.first_seal, archive.last_seal, archive.events, archive.chain_before)
        held = (header["first_seal"], header["last_seal"], header["events"])
        if (*held, header["chain_before"]) != recorded:
            report.problems.append(f"{where}its file holds other seals than its record says")
        tip = Tip(archive.first_seal, archive.chain_before, header["previous"], 0)
        for line in lines:
            if "seal" in line:
                if seal is not None:
                    _block_end(report, seal, chain, position, where)
                seal = seal_from_dict(line["seal"])
                tip = _seal_follows(report, seal, tip, where)
                chain, position = seal.chain_before, 0
                continue
            event, block = line["event"], f"seal {seal.seq if seal else '?'}"
            report.archived_events += 1
            if line["position"] != position:
                report.problems.append(f"{where}{block}: entry {position} is missing")
            if event_digest(event) != event["digest"]:
                report.problems.append(f"{where}event {event['id']} was altered")
            elif event["digest"] != line["sealed"]:
                report.problems.append(f"{where}event {event['id']} is not the event sealed")
            chain = link(chain, event["id"], line["sealed"])
            position += 1
    except (OSError, EOFError, ValueError, KeyError, TypeError, StopIteration) as error:
        report.problems.append(f"{where}its file cannot be read ({type(error).__name__})")
        return
    if seal is not None:
        _block_end(report, seal, chain, position, where)
    if tip.seq != archive.last_seal + 1 or tip.chain != archive.chain:
        report.problems.append(f"{where}its file does not end where its record says")


def _block_end(report: VerifyReport, seal: AuditSeal, chain: str, count: int, where: str) -> None:
    if count != seal.count or chain != seal.chain:
        report.problems.append(f"{where}seal {seal.seq}: its block does not chain")


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
        _block_end(report, seal, chain, len(block), "")
    for seq in entries:
        report.problems.append(f"entries name seal {seq}, which does not exist")
    return sealed


def audit_verify(*, schema: str, files: bool = False) -> VerifyReport:
    """Verify the current schema's trail (`schema` names it in the report); `files`: its
    archives' files too."""
    started = time.perf_counter()
    report = VerifyReport(schema=schema)
    archives, tip = _archives_check(report)
    if files:
        for archive in archives:
            _archive_file_check(report, archive)
    seals, tip = _seals_check(report, tip)
    horizon = tip.horizon
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
    order = {"event": 0, "seal": 1, "archive": 2}.get(kind, 3)
    return order, int(number.rstrip(":")) if number.rstrip(":").isdigit() else 0
