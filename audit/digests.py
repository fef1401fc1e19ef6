"""An event's digest: SHA-256 over one canonical spelling of every field it records.

The digest is computed when the event is written and stored with it; audit_verify
computes it again from the row as it is now. Any field changed since (by someone who
disabled the append-only trigger) gives another digest. The row id and the writing
transaction are not in it: the seals' chain binds each digest to its id and its place.
"""

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

# Every recorded field, in the digest; id, xact and digest itself are not.
DIGEST_FIELDS = (
    "recorded",
    "request_id",
    "tenant",
    "client_id",
    "partner",
    "actor",
    "source_address",
    "interaction",
    "resource_type",
    "resource_id",
    "patients",
    "query",
    "purpose",
    "consent",
    "consent_basis",
    "scopes",
    "status",
    "outcome",
    "latency_us",
    "release",
)


def _canonical(value: Any) -> Any:
    if isinstance(value, datetime):
        # PostgreSQL keeps microseconds; one zone, one spelling.
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if isinstance(value, list | tuple):
        return [_canonical(item) for item in value]
    return value


def event_canonical(fields: Mapping[str, Any]) -> dict[str, Any]:
    """An event's recorded fields in the one spelling the digest is made of; an archive
    stores them so, and its events' digests come out the same when read back."""
    return {name: _canonical(fields[name]) for name in DIGEST_FIELDS}


def event_digest(fields: Mapping[str, Any]) -> str:
    """The digest of an event's recorded fields (a row, what is about to be one, or an
    archived event)."""
    canonical = event_canonical(fields)
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()
