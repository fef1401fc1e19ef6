"""The chain that binds events to their ids and places, and the seals to each other.

chain(0) is GENESIS; each sealed event moves it: link(chain, event id, event digest). A
seal stores the chain before and after its block, and its own digest, which the next
seal names. Changing, removing, adding or reordering an event in a sealed block, or a
seal, breaks a link that audit_verify recomputes.
"""

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

GENESIS = "0" * 64


@dataclass(frozen=True)
class Tip:
    """Where the next seal picks up: its number, the chain and digest it must name as
    before it, and the horizon of the seal before it."""

    seq: int = 1
    chain: str = GENESIS
    previous: str = ""
    horizon: int = 0


def link(chain: str, event_id: int, digest: str) -> str:
    return hashlib.sha256(f"{chain}:{event_id}:{digest}".encode()).hexdigest()


class SealFields(Protocol):
    """What a seal's digest covers (an AuditSeal, before or after it is saved)."""

    seq: int
    sealed_at: datetime
    horizon: int
    count: int
    chain_before: str
    chain: str
    previous: str


def _chained_digest(seq: int, at: datetime, fields: tuple[object, ...], previous: str) -> str:
    """SHA-256 over a chained record (a seal, an archive): its number, its time in one
    spelling, its fields, and the digest of the record before it."""
    stamp = at.astimezone(UTC).isoformat(timespec="microseconds")
    text = "|".join(map(str, (seq, stamp, *fields)))
    return hashlib.sha256(f"{text}|{previous}".encode()).hexdigest()


def seal_digest(seal: SealFields) -> str:
    fields = (seal.horizon, seal.count, seal.chain_before, seal.chain)
    return _chained_digest(seal.seq, seal.sealed_at, fields, seal.previous)


class ArchiveFields(Protocol):
    """What an archive record's digest covers (an AuditArchive, before or after it is
    saved): the seals it took, how they chain, and its file."""

    seq: int
    archived_at: datetime
    first_seal: int
    last_seal: int
    events: int
    horizon: int
    chain_before: str
    chain: str
    seal_digest: str
    path: str
    sha256: str
    size: int
    previous: str


def archive_digest(archive: ArchiveFields) -> str:
    fields = (
        archive.first_seal,
        archive.last_seal,
        archive.events,
        archive.horizon,
        archive.chain_before,
        archive.chain,
        archive.seal_digest,
        archive.path,
        archive.sha256,
        archive.size,
    )
    return _chained_digest(archive.seq, archive.archived_at, fields, archive.previous)
