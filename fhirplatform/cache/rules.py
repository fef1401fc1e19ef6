"""Reads: the TTL rule of a resource type on a tenant (its CacheRule, else the default).

Rules are read per request, so each process keeps a tenant's rules in memory, stamped with
the tenant's POLICY token they were read under; a rule change bumps POLICY when it
commits (services.py), and the next request seeing the new token reads them again.
A stamp older than the data only costs one more read: the token is taken before the rows.
"""

import threading
from collections.abc import Mapping
from dataclasses import dataclass

from fhirplatform.cache.models import CacheRule
from fhirplatform.cache.type_classes import Rule, rule_default
from tenants.models import Tenant

__all__ = ["Rule", "TenantRules", "cache_rule", "cache_rules_for"]

# A process serving many tenants keeps at most this many; past it, it starts afresh.
MAX_TENANTS = 10_000


@dataclass(frozen=True)
class TenantRules:
    policy_token: str
    overrides: Mapping[str, Rule]  # the tenant's own rules, bounded (PHI never stale)

    def rule(self, resource_type: str) -> Rule:
        return self.overrides.get(resource_type) or rule_default(resource_type)


def _overrides_read(tenant: Tenant) -> dict[str, Rule]:
    return {row.resource_type: row.rule for row in CacheRule.objects.filter(tenant=tenant)}


def cache_rule(*, tenant: Tenant, resource_type: str) -> Rule:
    """The rule in force, read from the database now (the pipeline uses cache_rules_for)."""
    row = CacheRule.objects.filter(tenant=tenant, resource_type=resource_type).first()
    return row.rule if row is not None else rule_default(resource_type)


class _RulesCache:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_tenant: dict[int, TenantRules] = {}

    def get(self, tenant_id: int, policy_token: str) -> TenantRules | None:
        held = self.by_tenant.get(tenant_id)
        return held if held is not None and held.policy_token == policy_token else None

    def put(self, tenant_id: int, rules: TenantRules) -> None:
        with self.lock:
            if len(self.by_tenant) >= MAX_TENANTS:
                self.by_tenant.clear()
            self.by_tenant[tenant_id] = rules

    def drop(self, tenant_id: int) -> None:
        with self.lock:
            self.by_tenant.pop(tenant_id, None)

    def clear(self) -> None:
        with self.lock:
            self.by_tenant.clear()


rules_cache = _RulesCache()


def cache_rules_for(*, tenant: Tenant, policy_token: str) -> TenantRules:
    """The tenant's rules as of `policy_token` (the POLICY token of the request's lookup):
    from memory while the token is the one they were read under, else read again (one
    query)."""
    held = rules_cache.get(tenant.pk, policy_token)
    if held is not None:
        return held
    rules = TenantRules(policy_token=policy_token, overrides=_overrides_read(tenant))
    rules_cache.put(tenant.pk, rules)
    return rules
