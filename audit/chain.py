"""The chain that binds events to their ids and places, and the seals to each other.

chain(0) is GENESIS; each sealed event moves it: link(chain, event id, event digest). A
seal stores the chain before and after its block, and its own digest, which the next
seal names. Changing, removing, adding or reordering an event in a sealed block, or a
seal, breaks a link that audit_verify recomputes.
"""

import hashlib
from datetime import UTC, datetime

GENESIS = "0" * 64


def link(chain: str, event_id: int, digest: str) -> str:
    return hashlib.sha256(f"{chain}:{event_id}:{digest}".encode()).hexdigest()


def seal_digest(
    *,
    seq: int,
    sealed_at: datetime,
    horizon: int,
    count: int,
    chain_before: str,
    chain: str,
    previous: str,
) -> str:
    stamp = sealed_at.astimezone(UTC).isoformat(timespec="microseconds")
    text = f"{seq}|{stamp}|{horizon}|{count}|{chain_before}|{chain}|{previous}"
    return hashlib.sha256(text.encode()).hexdigest()
