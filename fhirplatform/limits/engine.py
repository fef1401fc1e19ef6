"""The limit engine: admits a FHIR request or refuses it with 429/503.

One request = one EVALSHA that checks every bucket that applies (tenant, client,
grant endpoint class, actor, resource type), the daily quotas, the in-flight
slots and the adaptive overload limit, and commits them only if all pass.
When Redis is unreachable a stricter in-process limiter takes over until it
answers again; nothing needs a restart.
"""

import logging
import math
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import redis
from django.conf import settings

from fhirplatform.errors import FhirError, IssueCode
from fhirplatform.limits import lua, metrics
from fhirplatform.limits.codes import SCOPE_REASON, EndpointClass, LimitScope, ThrottleReason
from fhirplatform.limits.costs import (
    CRITICALITY_SHARE,
    LATENCY_TARGET_MS,
    LOW_PRIORITY_BELOW,
    LOW_PRIORITY_SHARE_FACTOR,
)
from fhirplatform.limits.selectors import LimitProfile, OverrideRow, PlanLimits, profile_cache
from fhirplatform.limits.services import CONFIG_VERSION_KEY, throttle_event_record
from fhirplatform.redis_clients import redis_client
from tenants.tokens import Caller

__all__ = ["Admission", "EndpointClass", "ThrottleReason", "limit_admit"]

logger = logging.getLogger(__name__)

GLOBAL_INFLIGHT_KEY = "fp:rl:global:inflight"
ADAPTIVE_KEY = "fp:rl:global:adaptive"


@dataclass(frozen=True)
class RateBucket:
    scope: LimitScope
    key: str
    policy: str
    quota: int
    window: int
    burst_seconds: int
    dry_run: bool

    @property
    def interval(self) -> float:
        return self.window / self.quota

    @property
    def depth(self) -> int:
        return max(1, math.ceil(self.quota * self.burst_seconds / self.window))


@dataclass(frozen=True)
class DailyQuota:
    scope: LimitScope
    key: str
    policy: str
    quota: int
    expire_at: float
    dry_run: bool
    window: int = 86400


@dataclass(frozen=True)
class Slot:
    scope: LimitScope
    key: str
    policy: str
    cap: int
    dry_run: bool


@dataclass(frozen=True)
class LimitSet:
    """Every limit that applies to one request."""

    buckets: list[RateBucket]
    dailies: list[DailyQuota]
    slots: list[Slot]
    share: float
    overload_dry: bool
    tenant_slug: str
    client_id: str


@dataclass(frozen=True)
class ItemResult:
    ok: bool
    remaining: int
    reset_ms: int
    retry_ms: int


@dataclass(frozen=True)
class Decision:
    version: int
    admitted: bool
    adaptive_limit: float
    inflight: int
    items: list[ItemResult]  # buckets, dailies, slots, then the overload check


@dataclass
class Admission:
    """The outcome of admitting one request: headers to send, slots to release."""

    headers: dict[str, str] = field(default_factory=dict)
    request_id: str = ""
    slot_keys: tuple[str, ...] = ()
    endpoint_class: EndpointClass = EndpointClass.READ
    started: float = 0.0
    engine: str = "redis"
    released: bool = False

    def release(self, *, status: int = 200) -> None:
        if self.released or not self.request_id:
            return
        self.released = True
        limit_release(admission=self, status=status)


# --- resolving which limits apply -------------------------------------------------


def _matching(rows: list[OverrideRow], endpoint_class: EndpointClass) -> list[OverrideRow]:
    """Overrides for all classes first, then class-specific ones (which win)."""
    rows = [row for row in rows if row.endpoint_class in ("", endpoint_class)]
    return sorted(rows, key=lambda row: row.endpoint_class != "")


def _rate(
    plan: PlanLimits, endpoint_class: EndpointClass, rows: list[OverrideRow]
) -> tuple[int, int, int, bool]:
    quota, window = plan.quotas[endpoint_class]
    burst, dry = plan.burst_seconds, plan.dry_run
    for row in _matching(rows, endpoint_class):
        if row.per_minute is not None:
            quota, window = row.per_minute, 60
        if row.burst_seconds:
            burst = row.burst_seconds
        dry = dry or row.dry_run
    return quota, window, burst, dry


def _scalar(rows: list[OverrideRow], attribute: str, default: int) -> int:
    value = default
    for row in rows:
        if row.endpoint_class == "" and getattr(row, attribute) is not None:
            value = getattr(row, attribute)
    return value


def limit_set_for(
    *, profile: LimitProfile, caller: Caller, endpoint_class: EndpointClass, resource_type: str
) -> LimitSet:
    slug, cid, ec = caller.tenant.slug, caller.client.client_id, endpoint_class
    kill = not profile.limits_enabled
    buckets: list[RateBucket] = []

    def add(scope: LimitScope, key: str, policy: str, rate: tuple[int, int, int, bool]) -> None:
        quota, window, burst, dry = rate
        buckets.append(RateBucket(scope, key, policy, quota, window, burst, dry or kill))

    tenant_rows = profile.overrides_for(tenant=True, client=False)
    add(
        LimitScope.TENANT,
        f"fp:rl:{slug}:tenant:{ec}",
        f"tenant-{ec}",
        _rate(profile.tenant_plan, ec, tenant_rows),
    )
    client_rows = profile.overrides_for(tenant=False, client=True)
    if profile.client_plan is not None or _matching(client_rows, ec):
        # Client-wide: one bucket across every tenant the client reaches.
        base = profile.client_plan or profile.grant_plan
        add(
            LimitScope.CLIENT,
            f"fp:rl:client:{cid}:{ec}",
            f"client-{ec}",
            _rate(base, ec, client_rows),
        )
    grant_rows = profile.overrides_for(tenant=True, client=True)
    grant_rate = _rate(profile.grant_plan, ec, grant_rows)
    add(LimitScope.ENDPOINT, f"fp:rl:{slug}:grant:{cid}:{ec}", f"endpoint-{ec}", grant_rate)
    if caller.actor != cid:
        add(
            LimitScope.ACTOR,
            f"fp:rl:{slug}:actor:{cid}:{caller.actor}:{ec}",
            f"actor-{ec}",
            grant_rate,
        )
    for row in profile.resource_overrides(resource_type):
        if row.endpoint_class not in ("", ec) or row.client_id not in (None, caller.client.pk):
            continue
        who = cid if row.client_id else "all"
        suffix = f"-{row.endpoint_class}" if row.endpoint_class else ""
        add(
            LimitScope.RESOURCE,
            f"fp:rl:{slug}:resource:{resource_type}:{who}:{row.endpoint_class or 'all'}",
            f"resource-{resource_type}{suffix}",
            (
                row.per_minute or 0,
                60,
                row.burst_seconds or profile.grant_plan.burst_seconds,
                row.dry_run or profile.grant_plan.dry_run,
            ),
        )

    today = datetime.now(UTC).date()
    day_end = datetime.combine(today + timedelta(days=1), datetime.min.time(), UTC).timestamp()
    stamp = today.strftime("%Y%m%d")
    dailies = [
        DailyQuota(
            LimitScope.DAILY,
            f"fp:rl:{slug}:daily:tenant:{stamp}",
            "tenant-daily",
            _scalar(tenant_rows, "daily_quota", profile.tenant_plan.daily_quota),
            day_end,
            profile.tenant_plan.dry_run or kill,
        ),
        DailyQuota(
            LimitScope.DAILY,
            f"fp:rl:{slug}:daily:grant:{cid}:{stamp}",
            "daily",
            _scalar(grant_rows, "daily_quota", profile.grant_plan.daily_quota),
            day_end,
            profile.grant_plan.dry_run or kill,
        ),
    ]
    slots = [
        Slot(
            LimitScope.CONCURRENCY,
            f"fp:rl:{slug}:inflight",
            "tenant-concurrency",
            _scalar(tenant_rows, "concurrency", profile.tenant_plan.concurrency),
            profile.tenant_plan.dry_run or kill,
        ),
        Slot(
            LimitScope.CONCURRENCY,
            f"fp:rl:{slug}:inflight:{cid}",
            "endpoint-concurrency",
            _scalar(grant_rows, "concurrency", profile.grant_plan.concurrency),
            profile.grant_plan.dry_run or kill,
        ),
    ]
    share = CRITICALITY_SHARE[ec]
    if min(profile.tenant_plan.priority, profile.grant_plan.priority) < LOW_PRIORITY_BELOW:
        share *= LOW_PRIORITY_SHARE_FACTOR
    return LimitSet(buckets, dailies, slots, share, profile.grant_plan.dry_run or kill, slug, cid)


# --- deciding: Redis, or the local fallback -----------------------------------------


class _RedisLink:
    """The engine's Redis connection plus a breaker: after an error, the local limiter
    answers for LIMITS_REDIS_RETRY_SECONDS before Redis is tried again."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.url = ""
        self.client: redis.Redis | None = None
        self.admit: object = None
        self.release: object = None
        self.down_until = 0.0
        self.down = False

    def get(self) -> tuple[redis.Redis, object, object]:
        url = settings.LIMITS_REDIS_URL
        with self.lock:
            if self.client is None or self.url != url:
                # A slow or absent Redis costs one timeout, then the fallback answers.
                self.client = redis_client(
                    url, timeout_seconds=settings.LIMITS_REDIS_TIMEOUT_MS / 1000
                )
                self.admit = self.client.register_script(lua.ADMIT)
                self.release = self.client.register_script(lua.RELEASE)
                self.url = url
                self.down_until = 0.0
            return self.client, self.admit, self.release

    def available(self) -> bool:
        return time.monotonic() >= self.down_until

    def mark_down(self, exc: Exception) -> None:
        metrics.limiter_redis_errors.inc()
        with self.lock:
            self.down_until = time.monotonic() + settings.LIMITS_REDIS_RETRY_SECONDS
            was_down, self.down = self.down, True
        metrics.limiter_fallback.set(1)
        if not was_down:
            logger.error(
                "rate limiter: Redis unreachable, local fallback limiter active",
                extra={"error": f"{type(exc).__name__}: {exc}"},
            )

    def mark_up(self) -> None:
        if not self.down:
            return
        with self.lock:
            was_down, self.down = self.down, False
        metrics.limiter_fallback.set(0)
        if was_down:
            logger.warning("rate limiter: Redis reachable again, shared limits resumed")


_link = _RedisLink()


def limiter_in_fallback() -> bool:
    return _link.down


def _decide_redis(limits: LimitSet, request_id: str, cost: int) -> Decision:
    client, admit, _ = _link.get()
    keys = [CONFIG_VERSION_KEY, GLOBAL_INFLIGHT_KEY, ADAPTIVE_KEY]
    keys += [b.key for b in limits.buckets] + [d.key for d in limits.dailies]
    keys += [s.key for s in limits.slots]
    args: list[object] = [
        request_id,
        cost,
        settings.LIMITS_LEASE_SECONDS,
        limits.share,
        len(limits.buckets),
        len(limits.dailies),
        len(limits.slots),
        int(limits.overload_dry),
        settings.LIMITS_ADAPTIVE_MIN,
        settings.LIMITS_ADAPTIVE_MAX,
    ]
    for b in limits.buckets:
        args += [repr(b.interval), b.depth, int(b.dry_run)]
    for d in limits.dailies:
        args += [d.quota, d.expire_at, int(d.dry_run)]
    for s in limits.slots:
        args += [s.cap, int(s.dry_run)]
    raw = admit(keys=keys, args=args, client=client)  # type: ignore[operator]
    values = [int(v) for v in raw]
    items = [
        ItemResult(bool(values[i]), values[i + 1], values[i + 2], values[i + 3])
        for i in range(4, len(values), 4)
    ]
    return Decision(values[0], bool(values[1]), values[2] / 1000, values[3], items)


class LocalLimiter:
    """In-process GCRA with the same arithmetic as the Lua script, at a fraction of
    the quotas (each process only sees its own traffic). Daily quotas and the
    platform overload check need the shared view and are skipped."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tats: dict[str, float] = {}
        self.slots: dict[str, set[str]] = {}

    def decide(self, limits: LimitSet, request_id: str, cost: int) -> Decision:
        fraction = settings.LIMITS_FALLBACK_PERCENT / 100
        now = time.time()
        items: list[ItemResult] = []
        writes: list[tuple[str, float]] = []
        blocked = False
        with self.lock:
            if len(self.tats) > 50_000:
                self.tats = {k: v for k, v in self.tats.items() if v > now}
            for b in limits.buckets:
                quota = max(1, math.floor(b.quota * fraction))
                interval, depth = (
                    b.window / quota,
                    max(1, math.ceil(quota * b.burst_seconds / b.window)),
                )
                stored = self.tats.get(b.key, 0.0)
                tat = max(stored, now)
                new_tat = tat + cost * interval
                allow_at = new_tat - depth * interval
                if allow_at <= now or stored <= now:
                    remaining = math.floor((depth * interval - (new_tat - now)) / interval + 1e-9)
                    items.append(
                        ItemResult(True, max(remaining, 0), math.ceil((new_tat - now) * 1000), 0)
                    )
                    writes.append((b.key, new_tat))
                else:
                    remaining = math.floor((depth * interval - (tat - now)) / interval + 1e-9)
                    items.append(
                        ItemResult(
                            False,
                            max(remaining, 0),
                            math.ceil((tat - now) * 1000),
                            math.ceil((allow_at - now) * 1000),
                        )
                    )
                    blocked = blocked or not b.dry_run
            items += [ItemResult(True, d.quota, 0, 0) for d in limits.dailies]
            taken: list[str] = []
            for s in limits.slots:
                cap = max(1, math.floor(s.cap * fraction))
                held = self.slots.setdefault(s.key, set())
                if len(held) < cap:
                    items.append(ItemResult(True, cap - len(held) - 1, 0, 0))
                    taken.append(s.key)
                else:
                    items.append(ItemResult(False, 0, 1000, 1000))
                    blocked = blocked or not s.dry_run
            items.append(ItemResult(True, 0, 0, 0))
            if not blocked:
                self.tats.update(writes)
                for key in taken:
                    self.slots[key].add(request_id)
        return Decision(0, not blocked, 0.0, 0, items)

    def release(self, request_id: str, slot_keys: tuple[str, ...]) -> None:
        with self.lock:
            for key in slot_keys:
                self.slots.get(key, set()).discard(request_id)


local_limiter = LocalLimiter()


def _decide(limits: LimitSet, request_id: str, cost: int) -> tuple[Decision, str]:
    if _link.available():
        try:
            decision = _decide_redis(limits, request_id, cost)
        except redis.RedisError as exc:
            _link.mark_down(exc)
        else:
            _link.mark_up()
            profile_cache.observe_version(decision.version)
            metrics.adaptive_limit.set(decision.adaptive_limit)
            return decision, "redis"
    metrics.limiter_fallback_decisions.inc()
    return local_limiter.decide(limits, request_id, cost), "local"


# --- headers, refusals, release -------------------------------------------------------


def _seconds(ms: int) -> int:
    return max(0, math.ceil(ms / 1000))


def _fallback_quota(quota: int, engine: str) -> int:
    return (
        max(1, math.floor(quota * settings.LIMITS_FALLBACK_PERCENT / 100))
        if engine == "local"
        else quota
    )


def ratelimit_headers(limits: LimitSet, decision: Decision, engine: str) -> dict[str, str]:
    """RateLimit-Policy / RateLimit in the IETF httpapi draft's structured-field syntax."""
    policies: list[str] = []
    states: list[str] = []
    windowed: list[RateBucket | DailyQuota] = [*limits.buckets]
    if engine == "redis":
        windowed += limits.dailies
    for item, result in zip(windowed, decision.items, strict=False):
        quota = _fallback_quota(item.quota, engine) if isinstance(item, RateBucket) else item.quota
        policies.append(f'"{item.policy}";q={quota};w={item.window}')
        reset = result.reset_ms if result.ok else result.retry_ms
        states.append(f'"{item.policy}";r={result.remaining};t={_seconds(reset)}')
    return {"RateLimit-Policy": ", ".join(policies), "RateLimit": ", ".join(states)}


def retry_after_seconds(wait_ms: int) -> int:
    """Whole seconds, never before the limit resets, plus jitter so refused clients spread out."""
    base = max(1, _seconds(wait_ms))
    return base + random.randint(0, max(1, base // 10))


def _describe(
    item: RateBucket | DailyQuota | Slot | None,
    limits: LimitSet,
    ec: EndpointClass,
    resource_type: str,
    engine: str = "redis",
) -> tuple[ThrottleReason, str]:
    slug, cid = limits.tenant_slug, limits.client_id
    if item is None:
        return ThrottleReason.OVERLOAD, (f"The platform is overloaded and sheds {ec} traffic first")
    reason = SCOPE_REASON[item.scope]
    if isinstance(item, Slot):
        who = (
            f"tenant '{slug}'"
            if item.policy.startswith("tenant")
            else f"client '{cid}' on tenant '{slug}'"
        )
        return (
            reason,
            f"Too many requests in flight for {who} "
            f"(policy '{item.policy}', at most {item.cap} at once)",
        )
    if isinstance(item, DailyQuota):
        who = (
            f"tenant '{slug}'"
            if item.policy.startswith("tenant")
            else f"client '{cid}' on tenant '{slug}'"
        )
        return reason, (
            f"Daily quota of {item.quota} cost units for {who} is used up "
            f"(policy '{item.policy}', resets 00:00 UTC)"
        )
    scope_text = {
        LimitScope.TENANT: f"tenant '{slug}' (shared by all its clients)",
        LimitScope.CLIENT: f"client '{cid}' across all tenants",
        LimitScope.ENDPOINT: f"client '{cid}' on tenant '{slug}'",
        LimitScope.ACTOR: f"this actor of client '{cid}' on tenant '{slug}'",
        LimitScope.RESOURCE: f"{resource_type} on tenant '{slug}'",
    }[item.scope]
    return reason, (
        f"Rate limit for {ec} requests of {scope_text} reached (policy '{item.policy}', "
        f"{_fallback_quota(item.quota, engine)} units per {item.window} s"
        + (
            ", local fallback limits while the shared limiter is unreachable)"
            if engine == "local"
            else f", burst {item.depth})"
        )
    )


def limit_admit(
    *, caller: Caller, endpoint_class: EndpointClass, resource_type: str, cost: int = 1
) -> Admission:
    """Admit the request (returns an Admission to release when done) or raise
    FhirError 429 (rate, daily quota, concurrency) / 503 (overload)."""
    request_id = uuid.uuid4().hex
    cost = max(1, int(cost))
    profile, version = profile_cache.get(
        tenant=caller.tenant, client=caller.client, grant=caller.grant
    )
    limits = limit_set_for(
        profile=profile, caller=caller, endpoint_class=endpoint_class, resource_type=resource_type
    )
    if any(b.quota <= 0 and not b.dry_run for b in limits.buckets):
        closed = next(b for b in limits.buckets if b.quota <= 0)
        raise FhirError(
            429,
            IssueCode.THROTTLED,
            f"Policy '{closed.policy}' allows no {endpoint_class} requests",
            reason=SCOPE_REASON[closed.scope],
            headers={"Retry-After": str(retry_after_seconds(closed.window * 1000))},
        )
    decision, engine = _decide(limits, request_id, cost)
    if not decision.admitted and engine == "redis" and decision.version != version:
        # The limits changed since they were cached (e.g. the kill switch): a refusal
        # changed nothing in Redis, so decide again under the new ones.
        profile, version = profile_cache.get(
            tenant=caller.tenant, client=caller.client, grant=caller.grant
        )
        limits = limit_set_for(
            profile=profile,
            caller=caller,
            endpoint_class=endpoint_class,
            resource_type=resource_type,
        )
        decision, engine = _decide(limits, request_id, cost)
    headers = ratelimit_headers(limits, decision, engine)

    everything: list[RateBucket | DailyQuota | Slot | None] = [
        *limits.buckets,
        *limits.dailies,
        *limits.slots,
        None,
    ]
    refused: list[tuple[RateBucket | DailyQuota | Slot | None, ItemResult, bool]] = []
    for item, result in zip(everything, decision.items, strict=True):
        if not result.ok:
            dry = limits.overload_dry if item is None else item.dry_run
            refused.append((item, result, dry))
    for item, _, dry in refused:
        reason, _ = _describe(item, limits, endpoint_class, resource_type)
        throttle_event_record(
            tenant_id=caller.tenant.pk,
            client_id=caller.client.pk,
            reason=reason,
            endpoint_class=endpoint_class,
            policy=item.policy if item else "overload",
            dry_run=dry,
        )
    if decision.admitted:
        metrics.limiter_decisions.labels("admitted", "dry-run" if refused else "").inc()
        return Admission(
            headers=headers,
            request_id=request_id,
            slot_keys=tuple(s.key for s in limits.slots),
            endpoint_class=endpoint_class,
            started=time.monotonic(),
            engine=engine,
        )

    enforced = [(item, result) for item, result, dry in refused if not dry]
    windowed = [(i, r) for i, r in enforced if isinstance(i, RateBucket | DailyQuota)]
    slots = [(i, r) for i, r in enforced if isinstance(i, Slot)]
    # The longest wait is the one the client must honour; rate limits before slots.
    chosen, result = (
        max(windowed, key=lambda pair: pair[1].retry_ms)
        if windowed
        else slots[0]
        if slots
        else enforced[0]
    )
    reason, diagnostics = _describe(chosen, limits, endpoint_class, resource_type, engine)
    retry_after = retry_after_seconds(result.retry_ms)
    metrics.limiter_decisions.labels("refused", str(reason)).inc()
    status = 503 if reason == ThrottleReason.OVERLOAD else 429
    return_headers = dict(headers, **{"Retry-After": str(retry_after)})
    raise FhirError(
        status,
        IssueCode.THROTTLED,
        f"{diagnostics}; retry after {retry_after} s",
        reason=str(reason),
        headers=return_headers,
    )


def limit_release(*, admission: Admission, status: int) -> None:
    """Free the request's in-flight slots and feed its latency and outcome to the
    adaptive limit."""
    if admission.engine == "local":
        local_limiter.release(admission.request_id, admission.slot_keys)
        return
    elapsed_ms = (time.monotonic() - admission.started) * 1000
    bad = status >= 500 or elapsed_ms > LATENCY_TARGET_MS[admission.endpoint_class]
    try:
        client, _, release = _link.get()
        limit = release(  # type: ignore[operator]
            keys=[GLOBAL_INFLIGHT_KEY, ADAPTIVE_KEY, *admission.slot_keys],
            args=[
                admission.request_id,
                int(bad),
                settings.LIMITS_ADAPTIVE_MIN,
                settings.LIMITS_ADAPTIVE_MAX,
            ],
            client=client,
        )
        metrics.adaptive_limit.set(int(limit) / 1000)
    except redis.RedisError as exc:
        # The lease expires on its own; nothing leaks.
        _link.mark_down(exc)


def limits_reset_local_state() -> None:
    """Forget cached profiles and local fallback buckets (tests, and after an admin bulk edit)."""
    profile_cache.clear()
    global local_limiter
    local_limiter = LocalLimiter()
