"""Writes: a tenant's cache rules. A change bumps the tenant's POLICY generation when it
commits, so every process reads the tenant's rules again at its next request, and the
entries filled under the old policy are unreachable."""

from functools import partial

from django.db import transaction

from fhirplatform.cache.generations import generations_changed
from fhirplatform.cache.models import CacheRule
from fhirplatform.cache.rules import rules_cache
from tenants.models import Tenant


def _policy_changed(tenant: Tenant) -> None:
    rules_cache.drop(tenant.pk)  # this process at once, even should Redis be down
    transaction.on_commit(
        partial(generations_changed, tenant_schema=tenant.schema_name, policy=True)
    )


def cache_rule_set(
    *, tenant: Tenant, resource_type: str, ttl_seconds: int, swr_seconds: int = 0
) -> CacheRule:
    """Create or change the tenant's rule for `resource_type`. ValidationError when the rule
    is refused (unknown type, above CACHE_MAX_TTL_SECONDS, swr on a PHI type); then nothing
    changes."""
    with transaction.atomic():
        rule = (
            CacheRule.objects.select_for_update()
            .filter(tenant=tenant, resource_type=resource_type)
            .first()
        ) or CacheRule(tenant=tenant, resource_type=resource_type)
        rule.ttl_seconds, rule.swr_seconds = ttl_seconds, swr_seconds
        rule.full_clean()
        rule.save()
        _policy_changed(tenant)
    return rule


def cache_rule_delete(*, rule: CacheRule) -> None:
    """Back to the default rule for that type on that tenant."""
    with transaction.atomic():
        tenant = rule.tenant
        rule.delete()
        _policy_changed(tenant)
