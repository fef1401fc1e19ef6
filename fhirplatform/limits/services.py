"""Writes: limit overrides, the kill switch, and the throttle event log."""

import logging
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from typing import NamedTuple

import redis
from django.conf import settings
from django.db import transaction

from fhirplatform.flushing import BackgroundFlusher
from fhirplatform.limits.models import LimiterSwitch, LimitOverride, ThrottleEvent
from fhirplatform.limits.selectors import profile_cache
from fhirplatform.limits.store import CONFIG_VERSION_KEY, limiter_redis

logger = logging.getLogger(__name__)


def limits_config_bump() -> None:
    """Tell every process to drop its cached limits now, not when the cache expires; this
    one at once (its profiles and remembered refusals), the others at their next decision
    in Redis (a remembered refusal lives LIMITS_REFUSAL_MEMO_SECONDS at most)."""
    try:
        version = limiter_redis().incr(CONFIG_VERSION_KEY)
    except redis.RedisError:
        # The short local cache still picks the change up within seconds.
        logger.warning("rate limiter: could not publish a config change; caches expire anyway")
        return
    profile_cache.observe_version(int(version))


def limit_override_save(*, override: LimitOverride) -> LimitOverride:
    override.full_clean()
    override.save()
    transaction.on_commit(limits_config_bump)
    return override


def limit_override_delete(*, override: LimitOverride) -> None:
    override.delete()
    transaction.on_commit(limits_config_bump)


def limiter_switch_set(*, enabled: bool) -> LimiterSwitch:
    """The platform-wide kill switch: off means nothing is refused anywhere."""
    switch, _ = LimiterSwitch.objects.update_or_create(pk=1, defaults={"limits_enabled": enabled})
    logger.warning("rate limiter switch changed", extra={"limits_enabled": enabled})
    transaction.on_commit(limits_config_bump)
    return switch


class Refusals(NamedTuple):
    """Refusals alike enough to share one ThrottleEvent row (its fields, by name)."""

    tenant_id: int
    client_id: int
    reason: str
    endpoint_class: str
    policy: str
    dry_run: bool


_EventKey = tuple[int, Refusals]  # the epoch second, and what was refused


class ThrottleEventBuffer:
    """Refusals are counted in memory per second and per (tenant, client, reason,
    endpoint class, policy) and written by one bulk insert a second per process,
    so a client flooding at thousands of refusals a second costs one row per
    second per process, not one row per refusal."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[_EventKey] = Counter()
        self.flusher = BackgroundFlusher(
            self.flush,
            name="throttle-events",
            every=lambda: 1.0,
            what="rate limiter: throttle events",
        )

    def add(self, key: _EventKey) -> None:
        with self.lock:
            self.counts[key] += 1
            if settings.LIMITS_EVENTS_BACKGROUND_FLUSH:
                self.flusher.start()

    def flush(self) -> int:
        with self.lock:
            counts, self.counts = self.counts, Counter()
        if not counts:
            return 0
        rows = [
            ThrottleEvent(
                occurred=datetime.fromtimestamp(second, UTC), count=count, **refusals._asdict()
            )
            for (second, refusals), count in counts.items()
        ]
        ThrottleEvent.objects.bulk_create(rows)
        return len(rows)


_events = ThrottleEventBuffer()


def throttle_event_add(refusals: Refusals) -> None:
    """One more refused request, counted in this second's row for its kind of refusal."""
    _events.add((int(time.time()), refusals))


def throttle_events_flush() -> int:
    """Write buffered throttle events now; returns the number of rows written."""
    return _events.flush()
