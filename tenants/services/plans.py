"""Rate plans: the named tiers of limits that tenants, clients and grants are put on."""

import logging

from django.core.exceptions import ValidationError
from django.db.models import ProtectedError

from tenants.models import RatePlan
from tenants.services.base import ProvisioningError

logger = logging.getLogger(__name__)

# Limits far above any real load, for plans that count every request and refuse none.
_COUNT_ONLY_LIMITS: dict[str, int | bool] = {
    "read_per_minute": 1_000_000,
    "search_per_minute": 1_000_000,
    "write_per_minute": 1_000_000,
    "history_per_minute": 1_000_000,
    "batch_per_minute": 1_000_000,
    "export_per_hour": 1_000,
    "export_poll_per_minute": 1_000,
    "export_jobs_per_tenant": 1_000,
    "export_jobs_per_client": 1_000,
    "concurrency": 10_000,
    "daily_quota": 2_000_000_000,
    "dry_run": True,
}


def rate_plan_get(*, name: str) -> RatePlan:
    try:
        return RatePlan.objects.get(name=name)
    except RatePlan.DoesNotExist:
        known = ", ".join(RatePlan.objects.values_list("name", flat=True))
        raise ProvisioningError(f"unknown plan '{name}' (known: {known})") from None


def _plan_save(plan: RatePlan) -> None:
    # The model's own field rules (required limits, unique name, ranges) are the plan's rules.
    try:
        plan.full_clean()
    except ValidationError as exc:
        raise ProvisioningError(f"invalid rate plan '{plan.name}': {exc.message_dict}") from None
    plan.save()


def rate_plan_create(*, name: str, description: str = "", **limits: int | bool) -> RatePlan:
    """Create a plan from its limits, given by RatePlan field name."""
    plan = RatePlan(name=name, description=description, **limits)
    _plan_save(plan)
    logger.info("rate plan created", extra={"plan": name})
    return plan


def rate_plan_update(*, plan: RatePlan, **values: str | int | bool) -> RatePlan:
    """Change a plan's name, description or limits (RatePlan field names)."""
    for field_name, value in values.items():
        setattr(plan, field_name, value)
    _plan_save(plan)
    logger.info("rate plan changed", extra={"plan": plan.name, "fields": sorted(values)})
    return plan


def rate_plan_delete(*, plan: RatePlan) -> None:
    """Delete a plan nobody is on; a plan in use is refused."""
    try:
        plan.delete()
    except ProtectedError:
        raise ProvisioningError(f"plan '{plan.name}' is in use") from None
    logger.info("rate plan deleted", extra={"plan": plan.name})


def rate_plan_count_only(*, name: str, description: str) -> RatePlan:
    """A dry-run plan with limits far above any real load: every request is counted
    (RateLimit headers, metrics, throttle events) and none is refused. For load tests
    and test tenants, where the pipeline is measured rather than the plan."""
    existing = RatePlan.objects.filter(name=name).first()
    if existing is not None:
        return existing
    return rate_plan_create(name=name, description=description, **_COUNT_ONLY_LIMITS)
