"""Per-tenant cache statistics, kept in Redis: a counters hash per tenant (hits and misses
counted by the lookup script, fills by the fill script, invalidations by the bump, denials
here) and the tenant's key index (its entries)."""

import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from fhirplatform.cache.keys import StatField, index_key, stats_key
from fhirplatform.cache.link import cache_redis, link


@dataclass(frozen=True)
class TenantStats:
    counters: dict[str, int]  # every StatField, 0 when never counted
    entries: int  # live members of the key index

    def _ratio(self, hits_field: str, misses_field: str) -> float | None:
        hits, misses = self.counters[hits_field], self.counters[misses_field]
        return hits / (hits + misses) if hits + misses else None

    @property
    def hit_ratio(self) -> float | None:
        """The response tier's: answers served whole from the cache."""
        return self._ratio(StatField.HITS, StatField.MISSES)

    @property
    def semantic_hit_ratio(self) -> float | None:
        """The semantic tier's: searches' totals, pages and includes found computed."""
        return self._ratio(StatField.SEMANTIC_HITS, StatField.SEMANTIC_MISSES)

    def as_dict(self) -> dict[str, int | float | None]:
        return {
            **self.counters,
            "entries": self.entries,
            "hit_ratio": self.hit_ratio,
            "semantic_hit_ratio": self.semantic_hit_ratio,
        }


def cache_stats_many(*, tenant_schemas: Sequence[str]) -> dict[str, TenantStats] | None:
    """The statistics of many tenants in one round trip; None when Redis is unreachable."""
    if not link.available():
        return None
    now = time.time()
    pipe = cache_redis().pipeline(transaction=False)
    for schema in tenant_schemas:
        pipe.hgetall(stats_key(schema))
        pipe.zcount(index_key(schema), now, "+inf")
    try:
        replies = pipe.execute() if tenant_schemas else []
    except redis.RedisError as exc:
        link.mark_down(exc, operation="stats")
        return None
    link.mark_up()
    stats: dict[str, TenantStats] = {}
    for position, schema in enumerate(tenant_schemas):
        raw, entries = replies[2 * position], replies[2 * position + 1]
        counted = {name.decode(): int(value) for name, value in raw.items()}
        counters = {name: counted.get(name, 0) for name in StatField.ALL}
        stats[schema] = TenantStats(counters=counters, entries=int(entries))
    return stats


def cache_stats(*, tenant_schema: str) -> dict[str, int | float | None]:
    """Every StatField counter, entries, hit_ratio and semantic_hit_ratio (None before the
    tier's first lookup) of one tenant; {} when Redis is unreachable."""
    stats = cache_stats_many(tenant_schemas=[tenant_schema])
    return {} if stats is None else stats[tenant_schema].as_dict()


def cache_stats_denial(*, tenant_schema: str) -> None:
    """Count a consent denial (one HINCRBY); never raises, nothing while Redis is down."""
    if not link.available():
        return
    try:
        cache_redis().hincrby(stats_key(tenant_schema), StatField.DENIALS, 1)
    except redis.RedisError as exc:
        link.mark_down(exc, operation="stats_denial")
        return
    link.mark_up()
