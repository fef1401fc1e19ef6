"""How the cache's Redis keys are named. Every key names its tenant schema S first:

fp:c:S:g:<generation>   a generation token (generations.py)
fp:c:S:r:<digest>       a response entry; fp:c:S:s:<digest> a semantic one
fp:c:S:r:<digest>:swr   the refresh lock of a stale entry
fp:c:S:idx              the tenant's key index (ZSET: entry key -> expiry)
fp:c:S:stats            the tenant's counters (HASH)
fp:c:S:purge            "a purge is queued" (dedupes the purge task)
"""

import re
from enum import StrEnum

PREFIX = "fp:c"
# A PostgreSQL schema name as tenants get them: nothing that could end a key segment.
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class Namespace(StrEnum):
    """What an entry holds: a whole response, or a lookup's result (ids, a count)."""

    RESPONSE = "r"
    SEMANTIC = "s"

    @property
    def counter_prefix(self) -> str:
        """Each tier counts its own hits, misses and fills in the tenant's stats hash."""
        return "" if self is Namespace.RESPONSE else "semantic_"


_ENTRY_TAIL = re.compile(r"^[rs]:[0-9a-f]{40}$")


class StatField:
    """The counters of a tenant's stats hash (written by Lua and by Python): the response
    tier's, the semantic tier's (Namespace.counter_prefix), and the tenant's."""

    HITS = "hits"
    MISSES = "misses"
    BYPASSES = "bypasses"
    FILLS = "fills"
    FILLS_SKIPPED = "fills_skipped"
    SEMANTIC_HITS = "semantic_hits"
    SEMANTIC_MISSES = "semantic_misses"
    SEMANTIC_FILLS = "semantic_fills"
    SEMANTIC_FILLS_SKIPPED = "semantic_fills_skipped"
    INVALIDATIONS = "invalidations"
    DENIALS = "denials"

    ALL = (
        HITS,
        MISSES,
        BYPASSES,
        FILLS,
        FILLS_SKIPPED,
        SEMANTIC_HITS,
        SEMANTIC_MISSES,
        SEMANTIC_FILLS,
        SEMANTIC_FILLS_SKIPPED,
        INVALIDATIONS,
        DENIALS,
    )


def tenant_prefix(tenant_schema: str) -> str:
    """`fp:c:S:`; refuses a schema name that could reach into another tenant's keys."""
    if not _SCHEMA.match(tenant_schema):
        raise ValueError(f"not a tenant schema name: {tenant_schema!r}")
    return f"{PREFIX}:{tenant_schema}:"


def generation_key(tenant_schema: str, name: str) -> str:
    return f"{tenant_prefix(tenant_schema)}g:{name}"


def index_key(tenant_schema: str) -> str:
    return tenant_prefix(tenant_schema) + "idx"


def stats_key(tenant_schema: str) -> str:
    return tenant_prefix(tenant_schema) + "stats"


def purge_marker_key(tenant_schema: str) -> str:
    return tenant_prefix(tenant_schema) + "purge"


def refresh_lock_key(entry_key: str) -> str:
    return entry_key + ":swr"


def entry_key_check(*, key: str, tenant_schema: str) -> Namespace:
    """An entry key must be the tenant's own: its stats, index and generations are.
    Returns the entry's tier."""
    prefix = tenant_prefix(tenant_schema)
    if not key.startswith(prefix) or not _ENTRY_TAIL.match(key[len(prefix) :]):
        raise ValueError(f"{key!r} is not an entry key of {tenant_schema!r}")
    return Namespace(key[len(prefix)])
