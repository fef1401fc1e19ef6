"""The chain that binds events to their ids and places, and the seals to each other.

chain(0) is GENESIS; each sealed event moves it: link(chain, event id, event digest). A
seal stores the chain before and after its block, and its own digest, which the next
seal names. Changing, removing, adding or reordering an event in a sealed block, or a
seal, breaks a link that audit_verify recomputes.
"""

import hashlib
from datetime import UTC, datetime
from typing import Protocol

GENESIS = "0" * 64


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


def seal_digest(seal: SealFields) -> str:
    stamp = seal.sealed_at.astimezone(UTC).isoformat(timespec="microseconds")
    text = "|".join(
        map(str, (seal.seq, stamp, seal.horizon, seal.count, seal.chain_before, seal.chain))
    )
    return hashlib.sha256(f"{text}|{seal.previous}".encode()).hexdigest()
