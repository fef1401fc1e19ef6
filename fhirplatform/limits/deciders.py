"""Who decides a LimitSet: the shared limiter in Redis (one EVALSHA), or, while Redis is
unreachable, the in-process fallback limiter at a fraction of the quotas.

A breaker switches between them: after a Redis error the fallback answers for
LIMITS_REDIS_RETRY_SECONDS, then Redis is tried again; nothing needs a restart.
"""

import logging
import math
import threading
import time
from dataclasses import dataclass, replace

import redis
from django.conf import settings
from redis.commands.core import Script

from fhirplatform.limits import lua, metrics
from fhirplatform.limits.codes import Decider
from fhirplatform.limits.policies import LimitSet, RateBucket
from fhirplatform.limits.selectors import profile_cache
from fhirplatform.limits.store import (
    ADAPTIVE_KEY,
    CONFIG_VERSION_KEY,
    GLOBAL_INFLIGHT_KEY,
    limiter_redis,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ItemResult:
    ok: bool
    remaining: int
    reset_ms: int
    retry_ms: int


@dataclass(frozen=True)
class Decision:
    version: int  # the limits config version Redis holds (0 from the fallback)
    admitted: bool
    adaptive_limit: float
    inflight: int
    items: list[ItemResult]  # buckets, dailies, slots, then the overload check


# A slot (or the platform) that is full: the same answer as the Lua script's.
_FULL = ItemResult(False, 0, 1000, 1000)
_PASSED = ItemResult(True, 0, 0, 0)


def fallback_share(limit: int) -> int:
    """What the fallback allows of a quota or a cap: each process sees only its own traffic."""
    return max(1, math.floor(limit * settings.LIMITS_FALLBACK_PERCENT / 100))


class _RedisLink:
    """The limiter's Redis client, its two scripts, and the breaker."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.client: redis.Redis | None = None
        self.admit: Script | None = None
        self.release: Script | None = None
        self.down_until = 0.0
        self.down = False

    def scripts(self) -> tuple[redis.Redis, Script, Script]:
        client = limiter_redis()
        with self.lock:
            if client is not self.client or self.admit is None or self.release is None:
                # Another LIMITS_REDIS_URL (tests, a settings change): a fresh start there.
                self.admit = client.register_script(lua.ADMIT)
                self.release = client.register_script(lua.RELEASE)
                self.client = client
                self.down_until = 0.0
            return client, self.admit, self.release

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


def _decide_in_redis(limits: LimitSet, lease_id: str, cost: int) -> Decision:
    """One EVALSHA; the KEYS and ARGV layout is lua.ADMIT's."""
    client, admit, _ = _link.scripts()
    keys = [CONFIG_VERSION_KEY, GLOBAL_INFLIGHT_KEY, ADAPTIVE_KEY]
    keys += [b.key for b in limits.buckets] + [d.key for d in limits.dailies]
    keys += [s.key for s in limits.slots]
    args: list[str | int | float] = [
        lease_id,
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
    values = [int(v) for v in admit(keys=keys, args=args, client=client)]
    items = [ItemResult(bool(values[i]), *values[i + 1 : i + 4]) for i in range(4, len(values), 4)]
    return Decision(values[0], bool(values[1]), values[2] / 1000, values[3], items)


def _gcra(bucket: RateBucket, stored: float, now: float, cost: int) -> tuple[ItemResult, float]:
    """lua.ADMIT's bucket arithmetic for one bucket: its result, and its TAT afterwards
    (the new one if the cost was taken)."""
    interval, depth = bucket.interval, bucket.depth
    tat = max(stored, now)
    new_tat = tat + cost * interval
    allow_at = new_tat - depth * interval

    def remaining(until: float) -> int:
        return max(0, math.floor((depth * interval - (until - now)) / interval + 1e-9))

    # A request costing more than the whole depth still passes into a full bucket.
    if allow_at <= now or stored <= now:
        return ItemResult(True, remaining(new_tat), math.ceil((new_tat - now) * 1000), 0), new_tat
    waits = math.ceil((tat - now) * 1000), math.ceil((allow_at - now) * 1000)
    return ItemResult(False, remaining(tat), *waits), tat


class LocalLimiter:
    """In-process GCRA with the Lua script's arithmetic at a fraction of the quotas. Daily
    quotas and the platform overload check need the shared view and are skipped."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tats: dict[str, float] = {}
        self.slots: dict[str, set[str]] = {}  # slot key -> lease ids holding it

    def decide(self, limits: LimitSet, lease_id: str, cost: int) -> Decision:
        now = time.time()
        items: list[ItemResult] = []
        tats: list[tuple[str, float]] = []
        taken: list[str] = []
        blocked = False
        with self.lock:
            if len(self.tats) > 50_000:
                self.tats = {k: v for k, v in self.tats.items() if v > now}
            for bucket in limits.buckets:
                share = replace(bucket, quota=fallback_share(bucket.quota))
                result, tat = _gcra(share, self.tats.get(bucket.key, 0.0), now, cost)
                items.append(result)
                if result.ok:
                    tats.append((bucket.key, tat))
                else:
                    blocked = blocked or not bucket.dry_run
            items += [ItemResult(True, d.quota, 0, 0) for d in limits.dailies]
            for slot in limits.slots:
                cap = fallback_share(slot.cap)
                held = self.slots.setdefault(slot.key, set())
                if len(held) < cap:
                    items.append(ItemResult(True, cap - len(held) - 1, 0, 0))
                    taken.append(slot.key)
                else:
                    items.append(_FULL)
                    blocked = blocked or not slot.dry_run
            items.append(_PASSED)
            if not blocked:
                self.tats.update(tats)
                for key in taken:
                    self.slots[key].add(lease_id)
        return Decision(0, not blocked, 0.0, 0, items)

    def release(self, lease_id: str, slot_keys: tuple[str, ...]) -> None:
        with self.lock:
            for key in slot_keys:
                self.slots.get(key, set()).discard(lease_id)

    def clear(self) -> None:
        with self.lock:
            self.tats.clear()
            self.slots.clear()


local_limiter = LocalLimiter()


def limit_set_decide(*, limits: LimitSet, lease_id: str, cost: int) -> tuple[Decision, Decider]:
    """Decide in Redis while it answers, else locally; commits nothing unless admitted."""
    if _link.available():
        try:
            decision = _decide_in_redis(limits, lease_id, cost)
        except redis.RedisError as exc:
            _link.mark_down(exc)
        else:
            _link.mark_up()
            profile_cache.observe_version(decision.version)
            metrics.adaptive_limit.set(decision.adaptive_limit)
            return decision, Decider.REDIS
    metrics.limiter_fallback_decisions.inc()
    return local_limiter.decide(limits, lease_id, cost), Decider.LOCAL


def lease_release(
    *, decider: Decider, lease_id: str, slot_keys: tuple[str, ...], bad: bool
) -> None:
    """Give back a lease's slots where it was taken; in Redis, `bad` (slow or a server
    error) also cuts the adaptive limit, a good outcome grows it."""
    if decider == Decider.LOCAL:
        local_limiter.release(lease_id, slot_keys)
        return
    try:
        client, _, release = _link.scripts()
        limit = release(
            keys=[GLOBAL_INFLIGHT_KEY, ADAPTIVE_KEY, *slot_keys],
            args=[lease_id, int(bad), settings.LIMITS_ADAPTIVE_MIN, settings.LIMITS_ADAPTIVE_MAX],
            client=client,
        )
        metrics.adaptive_limit.set(int(limit) / 1000)
    except redis.RedisError as exc:
        # The lease expires on its own; nothing leaks.
        _link.mark_down(exc)
