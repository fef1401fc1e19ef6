"""Who decides a LimitSet: the shared limiter in Redis (one EVALSHA, which also carries the
process's queued releases and reads the caller generation), or, while Redis is
unreachable, the in-process fallback limiter at a fraction of the quotas.

A breaker switches between them: after a Redis error the fallback answers for
LIMITS_REDIS_RETRY_SECONDS, then Redis is tried again; nothing needs a restart.
"""

import atexit
import logging
import math
import threading
import time
from dataclasses import dataclass, replace
from typing import NamedTuple

import redis
from django.conf import settings
from redis.commands.core import Script

from fhirplatform.limits import lua, metrics
from fhirplatform.limits.codes import Decider
from fhirplatform.limits.policies import LimitSet, RateBucket
from fhirplatform.limits.releases import PendingRelease, ReleaseQueue
from fhirplatform.limits.selectors import profile_cache
from fhirplatform.limits.store import (
    ADAPTIVE_KEY,
    CONFIG_VERSION_KEY,
    GLOBAL_INFLIGHT_KEY,
    limiter_redis,
)
from fhirplatform.redis_clients import RedisBreaker
from tenants.token_cache import CALLER_GENERATION_KEY

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
    generation: int | None = None  # the caller generation Redis holds (None: the fallback)
    asked_at: float = 0.0  # time.monotonic() just before Redis was asked


class GenerationSeen(NamedTuple):
    value: int
    seen_at: float  # time.monotonic()


# A slot (or the platform) that is full: the same answer as the Lua script's.
_FULL = ItemResult(False, 0, 1000, 1000)
_PASSED = ItemResult(True, 0, 0, 0)


def fallback_share(limit: int) -> int:
    """What the fallback allows of a quota or a cap: each process sees only its own traffic."""
    return max(1, math.floor(limit * settings.LIMITS_FALLBACK_PERCENT / 100))


class _RedisLink(RedisBreaker):
    """The limiter's Redis client, its two scripts, and the breaker."""

    def __init__(self) -> None:
        super().__init__(lambda: settings.LIMITS_REDIS_RETRY_SECONDS)
        self.client: redis.Redis | None = None
        self.admit: Script | None = None
        self.release: Script | None = None

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

    def mark_down(self, exc: Exception) -> None:
        metrics.limiter_redis_errors.inc()
        newly_down = self.trip()
        metrics.limiter_fallback.set(1)
        if newly_down:
            logger.error(
                "rate limiter: Redis unreachable, local fallback limiter active",
                extra={"error": f"{type(exc).__name__}: {exc}"},
            )

    def reset(self) -> None:
        super().reset()
        metrics.limiter_fallback.set(0)

    def mark_up(self) -> None:
        if self.recover():
            metrics.limiter_fallback.set(0)
            logger.warning("rate limiter: Redis reachable again, shared limits resumed")


_link = _RedisLink()
_FIXED_KEYS = [CONFIG_VERSION_KEY, GLOBAL_INFLIGHT_KEY, ADAPTIVE_KEY, CALLER_GENERATION_KEY]
_generation_seen: GenerationSeen | None = None


def limiter_in_fallback() -> bool:
    return _link.down


def limiter_generation_seen() -> GenerationSeen | None:
    """The caller generation this process last read from Redis, and when; None before
    the first read and while the local fallback decides."""
    return None if _link.down else _generation_seen


def _observed(version: int, generation: int) -> None:
    global _generation_seen
    profile_cache.observe_version(version)
    _generation_seen = GenerationSeen(generation, time.monotonic())


def _releases_layout(
    releases: list[PendingRelease],
) -> tuple[list[str], list[str | int | float]]:
    """KEYS and ARGV of releases for lua.RELEASES_APPLY."""
    keys: list[str] = []
    args: list[str | int | float] = [len(releases)]
    for release in releases:
        keys += release.slot_keys
        args += [release.lease_id, int(release.bad), len(release.slot_keys)]
    return keys, args


def _send_releases(releases: list[PendingRelease]) -> bool:
    """The flusher's call: queued releases no admission picked up, in one EVALSHA."""
    if not _link.available():
        return False
    client, _, release = _link.scripts()
    keys, args = _releases_layout(releases)
    try:
        values = release(
            keys=_FIXED_KEYS + keys,
            args=[settings.LIMITS_ADAPTIVE_MIN, settings.LIMITS_ADAPTIVE_MAX, *args],
            client=client,
        )
    except redis.RedisError as exc:
        _link.mark_down(exc)
        return False
    _link.mark_up()
    version, limit, generation = (int(v) for v in values)
    _observed(version, generation)
    metrics.adaptive_limit.set(limit / 1000)
    return True


pending_releases = ReleaseQueue(_send_releases)


@atexit.register
def _release_at_exit() -> None:
    try:
        pending_releases.flush()
    except Exception:
        logger.exception("rate limiter: queued releases not sent at exit; their leases expire")


def _decide_in_redis(limits: LimitSet, lease_id: str, cost: int) -> Decision:
    """One EVALSHA, carrying the queued releases; the KEYS and ARGV layout is lua.ADMIT's."""
    client, admit, _ = _link.scripts()
    keys = [*_FIXED_KEYS]
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
    releases = pending_releases.take()
    release_keys, release_args = _releases_layout(releases)
    asked_at = time.monotonic()
    try:
        reply = admit(keys=keys + release_keys, args=args + release_args, client=client)
    except redis.RedisError:
        pending_releases.give_back(releases)
        raise
    values = [int(v) for v in reply]
    items = [ItemResult(bool(values[i]), *values[i + 1 : i + 4]) for i in range(5, len(values), 4)]
    return Decision(
        values[0], bool(values[1]), values[2] / 1000, values[3], items, values[4], asked_at
    )


def gcra(bucket: RateBucket, stored: float, now: float, cost: int) -> tuple[ItemResult, float]:
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
                result, tat = gcra(share, self.tats.get(bucket.key, 0.0), now, cost)
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
            _observed(decision.version, decision.generation or 0)
            metrics.adaptive_limit.set(decision.adaptive_limit)
            return decision, Decider.REDIS
    metrics.limiter_fallback_decisions.inc()
    return local_limiter.decide(limits, lease_id, cost), Decider.LOCAL


def lease_release(
    *, decider: Decider, lease_id: str, slot_keys: tuple[str, ...], bad: bool, started: float
) -> None:
    """Give back a lease's slots where it was taken. In Redis the release is queued for the
    process's next admission (or its flusher); there `bad` (slow or a server error) also
    cuts the adaptive limit, a good outcome grows it. `started`: when it was admitted
    (time.monotonic())."""
    if decider == Decider.LOCAL:
        local_limiter.release(lease_id, slot_keys)
        return
    now = time.monotonic()
    pending_releases.put(
        PendingRelease(lease_id, slot_keys, bad, now, started + settings.LIMITS_LEASE_SECONDS)
    )


def deciders_reset() -> None:
    """Forget the breaker's state, the generation seen and the fallback's buckets and slots
    (queued releases are the caller's to send or drop first)."""
    global _generation_seen
    _link.reset()
    _generation_seen = None
    local_limiter.clear()


def releases_flush() -> bool:
    """Send the queued releases now; False if Redis could not take them (they stay queued)."""
    return pending_releases.flush()
