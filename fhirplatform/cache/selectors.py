"""Reads for operators: every tenant's cache statistics and rules (admin page, /metrics)."""

from dataclasses import dataclass

from fhirplatform.cache.models import CacheRule
from fhirplatform.cache.stats import TenantStats, cache_stats_many
from tenants.models import Tenant
from tenants.selectors import tenants_with_schema


@dataclass(frozen=True)
class TenantCacheRow:
    tenant: Tenant
    stats: TenantStats | None  # None while Redis is unreachable
    rules: list[CacheRule]


def cache_overview() -> list[TenantCacheRow]:
    """Every tenant, its statistics (one Redis round trip for all) and its own rules."""
    tenants = list(tenants_with_schema())
    stats = cache_stats_many(tenant_schemas=[tenant.schema_name for tenant in tenants])
    rules: dict[int, list[CacheRule]] = {}
    for rule in CacheRule.objects.order_by("resource_type"):
        rules.setdefault(rule.tenant_id, []).append(rule)
    return [
        TenantCacheRow(
            tenant=tenant,
            stats=None if stats is None else stats[tenant.schema_name],
            rules=rules.get(tenant.pk, []),
        )
        for tenant in tenants
    ]


def cache_overview_stats() -> list[tuple[str, TenantStats]]:
    """(tenant slug, statistics) of every tenant; [] while Redis is unreachable."""
    tenants = list(tenants_with_schema().values_list("schema_name", "slug"))
    stats = cache_stats_many(tenant_schemas=[schema for schema, _ in tenants])
    if stats is None:
        return []
    return [(slug, stats[schema]) for schema, slug in tenants]
