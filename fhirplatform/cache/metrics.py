"""Prometheus metrics of the cache: this process's own counters, and the per-tenant
series read from the tenants' stats hashes in Redis when /metrics is scraped."""

import logging
from collections.abc import Iterator

from prometheus_client import Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

redis_errors = Counter(
    "fhirplatform_cache_redis_errors",
    "Redis errors seen by the cache, by operation",
    ["operation"],
)
redis_down = Gauge(
    "fhirplatform_cache_redis_down",
    "1 while this process bypasses the cache because Redis is unreachable",
    multiprocess_mode="livemax",
)
bypasses = Counter(
    "fhirplatform_cache_process_bypasses",
    "Cache lookups answered BYPASS by this process (Redis unreachable)",
)
bumps_failed = Counter(
    "fhirplatform_cache_generation_bumps_failed",
    "Generation bumps that could not reach Redis at commit (re-sent until they do)",
)
fills_refused = Counter(
    "fhirplatform_cache_fills_refused",
    "Fills refused before Redis was asked, by reason",
    ["reason"],
)
purge_enqueue_errors = Counter(
    "fhirplatform_cache_purge_enqueue_errors",
    "Purge tasks that could not be enqueued (the broker refused; entries stay unreachable)",
)

# The per-tenant series: (stat field, metric name, help).
TENANT_COUNTERS = (
    ("hits", "fhirplatform_cache_hits", "Cache hits (stale-while-revalidate hits included)"),
    ("misses", "fhirplatform_cache_misses", "Cache misses"),
    ("bypasses", "fhirplatform_cache_bypasses", "Lookups that bypassed an unreachable Redis"),
    ("fills", "fhirplatform_cache_fills", "Entries stored"),
    (
        "fills_skipped",
        "fhirplatform_cache_fills_skipped",
        "Fills refused: the tenant changed between lookup and fill",
    ),
    (
        "semantic_hits",
        "fhirplatform_cache_semantic_hits",
        "Semantic tier hits (a search's total, page ids or include ids)",
    ),
    ("semantic_misses", "fhirplatform_cache_semantic_misses", "Semantic tier misses"),
    ("semantic_fills", "fhirplatform_cache_semantic_fills", "Semantic tier entries stored"),
    ("invalidations", "fhirplatform_cache_invalidations", "Generation bumps"),
    ("denials", "fhirplatform_cache_consent_denials", "Consent denials"),
)


class TenantCacheCollector(Collector):
    """Reads every tenant's stats hash (one Redis round trip) at scrape time; label
    tenant=<slug>. Nothing when PostgreSQL or Redis cannot answer: a scrape must not fail."""

    def collect(self) -> Iterator[Metric]:
        from fhirplatform.cache.selectors import cache_overview_stats

        try:
            rows = cache_overview_stats()
        except Exception:
            logger.exception("cache metrics: per-tenant statistics unavailable")
            return
        for field, name, documentation in TENANT_COUNTERS:
            family = CounterMetricFamily(name, documentation, labels=["tenant"])
            for slug, stats in rows:
                family.add_metric([slug], float(stats.counters.get(field, 0)))
            yield family
        entries = GaugeMetricFamily(
            "fhirplatform_cache_entries", "Entries in the tenant's key index", labels=["tenant"]
        )
        ratio = GaugeMetricFamily(
            "fhirplatform_cache_hit_ratio", "hits / (hits + misses)", labels=["tenant"]
        )
        semantic_ratio = GaugeMetricFamily(
            "fhirplatform_cache_semantic_hit_ratio",
            "semantic_hits / (semantic_hits + semantic_misses)",
            labels=["tenant"],
        )
        for slug, stats in rows:
            entries.add_metric([slug], float(stats.entries))
            if stats.hit_ratio is not None:
                ratio.add_metric([slug], stats.hit_ratio)
            if stats.semantic_hit_ratio is not None:
                semantic_ratio.add_metric([slug], stats.semantic_hit_ratio)
        yield entries
        yield ratio
        yield semantic_ratio

    def describe(self) -> Iterator[Metric]:
        # Nothing at registration: describing would read PostgreSQL and Redis.
        return iter(())


_registered = False


def tenant_collector_register() -> None:
    """Serve the per-tenant series from the default registry (once per process)."""
    global _registered
    if _registered:
        return
    from prometheus_client import REGISTRY

    from fhirplatform.metrics import SCRAPE_COLLECTORS

    collector = TenantCacheCollector()
    REGISTRY.register(collector)
    SCRAPE_COLLECTORS.append(collector)  # the multiprocess /metrics serves it too
    _registered = True
