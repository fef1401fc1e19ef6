"""Reads: the limits that apply to a caller, resolved from plans and overrides."""

import threading
import time
from dataclasses import dataclass, field, fields

from django.conf import settings
from django.db.models import Q

from fhirplatform.limits.codes import EndpointClass, LimitScope
from fhirplatform.limits.models import LimiterSwitch, LimitOverride, ThrottleEvent
from tenants.models import ApiClient, Grant, RatePlan, Tenant

# (quota units, window seconds) per endpoint class, read from a RatePlan.
_PLAN_FIELDS: dict[EndpointClass, tuple[str, int]] = {
    EndpointClass.READ: ("read_per_minute", 60),
    EndpointClass.SEARCH: ("search_per_minute", 60),
    EndpointClass.WRITE: ("write_per_minute", 60),
    EndpointClass.HISTORY: ("history_per_minute", 60),
    EndpointClass.BATCH: ("batch_per_minute", 60),
    EndpointClass.EXPORT: ("export_per_hour", 3600),
    EndpointClass.EXPORT_POLL: ("export_poll_per_minute", 60),
}


@dataclass(frozen=True)
class PlanLimits:
    name: str
    quotas: dict[EndpointClass, tuple[int, int]]
    burst_seconds: int
    concurrency: int
    daily_quota: int
    priority: int
    dry_run: bool

    @classmethod
    def of(cls, plan: RatePlan) -> "PlanLimits":
        return cls(
            name=plan.name,
            quotas={ec: (getattr(plan, f), w) for ec, (f, w) in _PLAN_FIELDS.items()},
            burst_seconds=plan.burst_seconds,
            concurrency=plan.concurrency,
            daily_quota=plan.daily_quota,
            priority=plan.priority,
            dry_run=plan.dry_run,
        )


@dataclass(frozen=True)
class OverrideRow:
    tenant_id: int | None
    client_id: int | None
    endpoint_class: str
    resource_type: str
    per_minute: int | None
    burst_seconds: int | None
    concurrency: int | None
    daily_quota: int | None
    dry_run: bool

    @property
    def scope(self) -> LimitScope:
        """Whose limits a (non-resource) override replaces: see LimitOverride."""
        if self.tenant_id is not None and self.client_id is not None:
            return LimitScope.ENDPOINT
        return LimitScope.TENANT if self.tenant_id is not None else LimitScope.CLIENT


@dataclass(frozen=True)
class LimitProfile:
    """Everything the engine needs about one client on one tenant (cached briefly).

    `overrides` are in the order they apply: an endpoint class's own override comes
    after the class-wide ones of its scope, so it wins; resource-type overrides keep
    their stored order (the order of their RateLimit policies)."""

    tenant_id: int
    client_id: int
    tenant_plan: PlanLimits
    grant_plan: PlanLimits
    client_plan: PlanLimits | None
    overrides: list[OverrideRow] = field(default_factory=list)
    limits_enabled: bool = True


def limiter_switch_enabled() -> bool:
    switch = LimiterSwitch.objects.filter(pk=1).first()
    return switch.limits_enabled if switch else True


def limit_profile_load(*, tenant: Tenant, client: ApiClient, grant: Grant) -> LimitProfile:
    rows = LimitOverride.objects.filter(
        Q(tenant=tenant, client__isnull=True)
        | Q(tenant=tenant, client=client)
        | Q(tenant__isnull=True, client=client)
    ).values(*(column.name for column in fields(OverrideRow)))
    # By id, in one query: the caller's tenant, client and grant may come from the token
    # cache, and a plan edited since must still apply within the profile's lifetime.
    plans = RatePlan.objects.in_bulk({tenant.plan_id, grant.plan_id, client.plan_id} - {None})
    client_plan = plans[client.plan_id] if client.plan_id else None
    overrides = [OverrideRow(**row) for row in rows]
    # Stable: class-specific scope overrides move behind the class-wide ones, the rest stay.
    overrides.sort(key=lambda row: bool(row.endpoint_class) and not row.resource_type)
    return LimitProfile(
        tenant_id=tenant.pk,
        client_id=client.pk,
        tenant_plan=PlanLimits.of(plans[tenant.plan_id]),
        grant_plan=PlanLimits.of(plans[grant.plan_id]),
        client_plan=PlanLimits.of(client_plan) if client_plan else None,
        overrides=overrides,
        limits_enabled=limiter_switch_enabled(),
    )


class ProfileCache:
    """Per-process cache of profiles: a few seconds old at most, and dropped as soon
    as the engine sees the Redis config version move (an admin edit bumps it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[int, int, int], tuple[float, int, LimitProfile]] = {}
        self.seen_version = 0

    def get(self, *, tenant: Tenant, client: ApiClient, grant: Grant) -> tuple[LimitProfile, int]:
        """The profile and the config version it was loaded under."""
        key = (tenant.pk, client.pk, grant.pk)
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key)
            version = self.seen_version
        if entry and entry[0] > now and entry[1] == version:
            return entry[2], version
        profile = limit_profile_load(tenant=tenant, client=client, grant=grant)
        with self._lock:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[key] = (now + settings.LIMITS_CONFIG_CACHE_SECONDS, version, profile)
        return profile, version

    def peek(
        self, *, tenant: Tenant, client: ApiClient, grant: Grant
    ) -> tuple[LimitProfile, int] | None:
        """The cached profile and its config version, or None: never a database read."""
        with self._lock:
            entry = self._entries.get((tenant.pk, client.pk, grant.pk))
            version = self.seen_version
        if entry and entry[0] > time.monotonic() and entry[1] == version:
            return entry[2], version
        return None

    def observe_version(self, version: int) -> None:
        with self._lock:
            self.seen_version = version

    def clear(self) -> None:
        """Start afresh, as a new process would (the next decision tells the version)."""
        with self._lock:
            self._entries.clear()
            self.seen_version = 0


profile_cache = ProfileCache()


def throttle_events_for(*, tenant: Tenant, client: ApiClient | None = None) -> list[ThrottleEvent]:
    """Recent throttle events of a tenant (optionally one client), newest first."""
    events = ThrottleEvent.objects.filter(tenant=tenant)
    if client is not None:
        events = events.filter(client=client)
    return list(events.order_by("-occurred")[:500])
