"""The refusal memo: a client flooding past its limit is refused in process, with no Redis
call, for as long as the refusal is certain.

When Redis refuses a request on a rate bucket or a daily quota, what its answer tells
about each of the request's counters is a floor: a bucket's stored TAT only moves forward,
a day's use only grows until the day's key changes. Recomputing the decision from those
floors (the Lua script's arithmetic) can only err towards admitting; so when the
recomputation still refuses, Redis would refuse too, with the same reason and headers.
Anything it would admit goes to Redis. Slots and the overload check are never answered
here: they go down as well as up.

A floor is kept LIMITS_REFUSAL_MEMO_SECONDS at most (so a refused client still reaches
Redis, and the rest of the pipeline, that often) and only under the config version it was
learned with: an admin change (a raised quota) drops it, in this process at once.
"""

import math
import threading
import time
from dataclasses import dataclass

from django.conf import settings

from fhirplatform.limits.deciders import ItemResult, gcra
from fhirplatform.limits.policies import DailyQuota, LimitSet, RateBucket

# What Redis's whole-millisecond answers may overstate a time by.
_ROUNDING = 0.001


@dataclass(frozen=True)
class _Floor:
    """What a refusal proved about one counter in Redis."""

    version: int
    shape: tuple[float, float]  # bucket: (interval, depth); daily: (quota, 0)
    floor: float  # bucket: its TAT, as a time.monotonic(); daily: the units used
    good_until: float  # time.monotonic(); for a daily, never past the day's reset
    resets_at: float = math.inf  # daily: when its counter starts again


def _shape(item: RateBucket | DailyQuota) -> tuple[float, float]:
    if isinstance(item, RateBucket):
        return item.interval, item.depth
    return item.quota, 0


def refusal_memo_seconds() -> float:
    return float(settings.LIMITS_REFUSAL_MEMO_SECONDS)


class RefusalMemo:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._floors: dict[str, _Floor] = {}
        self._good_until = 0.0  # time.monotonic() the last remembered refusal lapses at

    def empty(self) -> bool:
        """Nothing remembered that still holds: no request can be refused here (no lock).
        Once every refusal has lapsed, the process's requests skip the refusal checks."""
        return not self._floors or time.monotonic() >= self._good_until

    def learn(
        self,
        *,
        limits: LimitSet,
        items: list[ItemResult],
        version: int,
        cost: int,
        asked_at: float,
    ) -> None:
        """Keep what a Redis refusal (`items`, asked at time.monotonic() `asked_at`) says
        about the request's windowed limits, if a bucket or a daily quota refused it."""
        lifetime = refusal_memo_seconds()
        windowed: list[RateBucket | DailyQuota] = [*limits.buckets, *limits.dailies]
        refused = any(not r.ok and not i.dry_run for i, r in zip(windowed, items, strict=False))
        if lifetime <= 0 or not refused:
            return
        good_until = asked_at + lifetime
        floors: dict[str, _Floor] = {}
        for bucket, result in zip(limits.buckets, items, strict=False):
            # Refused: reset_ms is the TAT's distance; admitted, it includes this request.
            ahead = result.reset_ms / 1000 - (cost * bucket.interval if result.ok else 0)
            # asked_at precedes Redis's own "now": the floor is early, never late.
            floors[bucket.key] = _Floor(
                version, _shape(bucket), asked_at + ahead - _ROUNDING, good_until
            )
        for daily, result in zip(limits.dailies, items[len(limits.buckets) :], strict=False):
            if result.ok:
                used = daily.quota - result.remaining - cost
            else:  # remaining is max(quota - used, 0): 0 says "at least the quota"
                used = daily.quota - result.remaining
            resets_at = asked_at + result.reset_ms / 1000 - _ROUNDING
            floors[daily.key] = _Floor(
                version, _shape(daily), used, min(good_until, resets_at), resets_at
            )
        with self._lock:
            if len(self._floors) > 10_000:
                now = time.monotonic()
                self._floors = {k: f for k, f in self._floors.items() if f.good_until > now}
            self._floors.update(floors)
            self._good_until = max(self._good_until, *(f.good_until for f in floors.values()))

    def recall(self, *, limits: LimitSet, version: int, cost: int) -> list[ItemResult] | None:
        """The results Redis would give for the request's buckets and daily quotas, if it
        would certainly refuse it; None when it might admit it or a limit is not known."""
        if not self._floors:
            return None
        now = time.monotonic()
        results: list[ItemResult] = []
        refused = False
        windowed: list[RateBucket | DailyQuota] = [*limits.buckets, *limits.dailies]
        for item in windowed:
            known = self._floors.get(item.key)
            if (
                known is None
                or known.version != version
                or known.shape != _shape(item)
                or now >= known.good_until
            ):
                return None
            if isinstance(item, RateBucket):
                result, _ = gcra(item, known.floor, now, cost)
            else:
                result = _daily(item, known, now, cost)
            results.append(result)
            refused = refused or (not result.ok and not item.dry_run)
        return results if refused else None

    def clear(self) -> None:
        with self._lock:
            self._floors.clear()
            self._good_until = 0.0


def _daily(daily: DailyQuota, known: _Floor, now: float, cost: int) -> ItemResult:
    """lua.ADMIT's daily quota arithmetic."""
    reset_ms = math.ceil((known.resets_at - now) * 1000)
    used = int(known.floor)
    if used + cost <= daily.quota:
        return ItemResult(True, daily.quota - used - cost, reset_ms, 0)
    return ItemResult(False, max(daily.quota - used, 0), reset_ms, reset_ms)


refusal_memo = RefusalMemo()
