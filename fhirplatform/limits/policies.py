"""Which limits apply to one request: the LimitSet, resolved from a cached LimitProfile.

Each limit is named by its policy (the name a client sees in the RateLimit headers) and
by the Redis key that counts it. Limits are per tenant, per client, per grant endpoint
class and per resource type; there is no per-actor limit (a client-credentials token
has no end-user actor: the client is the caller).
"""

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from fhirplatform.limits.codes import EndpointClass, LimitScope
from fhirplatform.limits.costs import (
    CRITICALITY_SHARE,
    LOW_PRIORITY_BELOW,
    LOW_PRIORITY_SHARE_FACTOR,
)
from fhirplatform.limits.selectors import LimitProfile, OverrideRow, PlanLimits
from fhirplatform.limits.store import limit_key
from tenants.tokens import Caller

DAY_SECONDS = 86400


@dataclass(frozen=True)
class RateBucket:
    """A GCRA bucket: `quota` units per `window` seconds, bursting `burst_seconds` of it."""

    scope: LimitScope
    key: str
    policy: str
    quota: int
    window: int
    burst_seconds: int
    dry_run: bool

    @property
    def interval(self) -> float:
        # A closed policy (quota 0) only reaches a decider in dry-run: it counts as if it
        # allowed one unit, so it reports instead of dividing by zero.
        return self.window / max(self.quota, 1)

    @property
    def depth(self) -> int:
        return max(1, math.ceil(self.quota * self.burst_seconds / self.window))


@dataclass(frozen=True)
class DailyQuota:
    scope: LimitScope
    counts: LimitScope  # whose day it is: the tenant's, or the client's on the tenant
    key: str
    policy: str
    quota: int
    expire_at: float
    dry_run: bool
    window: int = DAY_SECONDS


@dataclass(frozen=True)
class Slot:
    scope: LimitScope
    counts: LimitScope  # whose requests in flight: the tenant's, or the client's on it
    key: str
    policy: str
    cap: int
    dry_run: bool


LimitItem = RateBucket | DailyQuota | Slot


@dataclass(frozen=True)
class LimitSet:
    """Every limit that applies to one request."""

    buckets: list[RateBucket]
    dailies: list[DailyQuota]
    slots: list[Slot]
    share: float  # of the adaptive in-flight limit this request may use
    overload_dry: bool
    tenant_slug: str
    client_id: str


@dataclass
class _ScopeLimits:
    """One scope's plan limits for one endpoint class, overrides folded in as they come."""

    quota: int
    window: int
    burst_seconds: int
    dry_run: bool
    concurrency: int
    daily_quota: int
    overridden: bool = False

    @classmethod
    def of(cls, plan: PlanLimits, endpoint_class: EndpointClass) -> "_ScopeLimits":
        quota, window = plan.quotas[endpoint_class]
        return cls(
            quota, window, plan.burst_seconds, plan.dry_run, plan.concurrency, plan.daily_quota
        )

    def apply(self, row: OverrideRow) -> None:
        if row.per_minute is not None:
            self.quota, self.window = row.per_minute, 60
        if row.burst_seconds:
            self.burst_seconds = row.burst_seconds
        self.dry_run = self.dry_run or row.dry_run
        # Concurrency and the daily quota are not per endpoint class.
        if not row.endpoint_class:
            if row.concurrency is not None:
                self.concurrency = row.concurrency
            if row.daily_quota is not None:
                self.daily_quota = row.daily_quota
        self.overridden = True


@dataclass(frozen=True)
class _Resolved:
    tenant: _ScopeLimits
    client: _ScopeLimits  # on the client's own plan, else the grant's
    grant: _ScopeLimits
    resource_rows: list[OverrideRow]  # the resource-type overrides that apply


def _overrides_resolve(
    *, profile: LimitProfile, endpoint_class: EndpointClass, resource_type: str, client_pk: int
) -> _Resolved:
    """The plans' limits for this request, every override that applies folded in, in one
    pass over the profile's overrides (they come in the order they apply)."""
    resolved = _Resolved(
        tenant=_ScopeLimits.of(profile.tenant_plan, endpoint_class),
        client=_ScopeLimits.of(profile.client_plan or profile.grant_plan, endpoint_class),
        grant=_ScopeLimits.of(profile.grant_plan, endpoint_class),
        resource_rows=[],
    )
    by_scope = {
        LimitScope.TENANT: resolved.tenant,
        LimitScope.CLIENT: resolved.client,
        LimitScope.ENDPOINT: resolved.grant,
    }
    for row in profile.overrides:
        if row.endpoint_class not in ("", endpoint_class):
            continue
        if not row.resource_type:
            by_scope[row.scope].apply(row)
        elif row.resource_type == resource_type and row.client_id in (None, client_pk):
            resolved.resource_rows.append(row)
    return resolved


_SECONDS_A_DAY = 86_400
_day: tuple[int, str, float] = (-1, "", 0.0)


def _today() -> tuple[str, float]:
    """Today's UTC date stamp and the epoch second the day ends at (quotas reset then)."""
    global _day
    epoch_day = int(time.time() // _SECONDS_A_DAY)
    if _day[0] != epoch_day:
        stamp = datetime.fromtimestamp(epoch_day * _SECONDS_A_DAY, UTC).strftime("%Y%m%d")
        _day = (epoch_day, stamp, float((epoch_day + 1) * _SECONDS_A_DAY))
    return _day[1], _day[2]


_LimitSetKey = tuple[str, str, int, EndpointClass, str]
# A request's limits follow from the profile (a new object whenever the configuration is
# reloaded), the caller, the endpoint and the day alone: kept until one of them changes.
_limit_sets: dict[_LimitSetKey, tuple[LimitProfile, str, "LimitSet"]] = {}
_LIMIT_SETS_KEPT = 10_000


def limit_set_for(
    *, profile: LimitProfile, caller: Caller, endpoint_class: EndpointClass, resource_type: str
) -> LimitSet:
    """The limits of one request: rate buckets, daily quotas, in-flight slots and its
    share of the platform's adaptive limit. The kill switch turns every one to dry-run."""
    stamp, day_end = _today()
    key = (
        caller.tenant.slug,
        caller.client.client_id,
        caller.client.pk,
        endpoint_class,
        resource_type,
    )
    kept = _limit_sets.get(key)
    if kept is not None and kept[0] is profile and kept[1] == stamp:
        return kept[2]
    limits = _limit_set_build(profile, caller, endpoint_class, resource_type, stamp, day_end)
    if len(_limit_sets) >= _LIMIT_SETS_KEPT:
        _limit_sets.clear()
    _limit_sets[key] = (profile, stamp, limits)
    return limits


def limit_sets_clear() -> None:
    _limit_sets.clear()


def _limit_set_build(
    profile: LimitProfile,
    caller: Caller,
    endpoint_class: EndpointClass,
    resource_type: str,
    stamp: str,
    day_end: float,
) -> LimitSet:
    slug, cid, ec = caller.tenant.slug, caller.client.client_id, endpoint_class
    kill = not profile.limits_enabled
    resolved = _overrides_resolve(
        profile=profile, endpoint_class=ec, resource_type=resource_type, client_pk=caller.client.pk
    )
    tenant, client, grant = resolved.tenant, resolved.client, resolved.grant

    def bucket(scope: LimitScope, key: str, policy: str, limits: _ScopeLimits) -> RateBucket:
        dry = limits.dry_run or kill
        return RateBucket(
            scope, key, policy, limits.quota, limits.window, limits.burst_seconds, dry
        )

    buckets = [bucket(LimitScope.TENANT, limit_key(slug, "tenant", ec), f"tenant-{ec}", tenant)]
    if profile.client_plan is not None or client.overridden:
        # Client-wide: one bucket across every tenant the client reaches.
        buckets.append(
            bucket(LimitScope.CLIENT, limit_key("client", cid, ec), f"client-{ec}", client)
        )
    buckets.append(
        bucket(LimitScope.ENDPOINT, limit_key(slug, "grant", cid, ec), f"endpoint-{ec}", grant)
    )
    grant_plan = profile.grant_plan
    for row in resolved.resource_rows:
        suffix = f"-{row.endpoint_class}" if row.endpoint_class else ""
        buckets.append(
            RateBucket(
                LimitScope.RESOURCE,
                limit_key(
                    slug,
                    "resource",
                    resource_type,
                    cid if row.client_id else "all",
                    row.endpoint_class or "all",
                ),
                f"resource-{resource_type}{suffix}",
                row.per_minute or 0,
                60,
                row.burst_seconds or grant_plan.burst_seconds,
                row.dry_run or grant_plan.dry_run or kill,
            )
        )

    tenant_dry = profile.tenant_plan.dry_run or kill
    grant_dry = grant_plan.dry_run or kill
    dailies = [
        DailyQuota(
            LimitScope.DAILY,
            LimitScope.TENANT,
            limit_key(slug, "daily", "tenant", stamp),
            "tenant-daily",
            tenant.daily_quota,
            day_end,
            tenant_dry,
        ),
        DailyQuota(
            LimitScope.DAILY,
            LimitScope.ENDPOINT,
            limit_key(slug, "daily", "grant", cid, stamp),
            "daily",
            grant.daily_quota,
            day_end,
            grant_dry,
        ),
    ]
    slots = [
        Slot(
            LimitScope.CONCURRENCY,
            LimitScope.TENANT,
            limit_key(slug, "inflight"),
            "tenant-concurrency",
            tenant.concurrency,
            tenant_dry,
        ),
        Slot(
            LimitScope.CONCURRENCY,
            LimitScope.ENDPOINT,
            limit_key(slug, "inflight", cid),
            "endpoint-concurrency",
            grant.concurrency,
            grant_dry,
        ),
    ]
    share = CRITICALITY_SHARE[ec]
    if min(profile.tenant_plan.priority, grant_plan.priority) < LOW_PRIORITY_BELOW:
        share *= LOW_PRIORITY_SHARE_FACTOR
    return LimitSet(buckets, dailies, slots, share, grant_dry, slug, cid)
