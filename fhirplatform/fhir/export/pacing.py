"""What keeps exports fair to everyone else: polls no faster than the Retry-After a
client was given, and a worker that takes turns with interactive traffic, and pauses
while that traffic is near the adaptive limit's share for exports.

Both read the limiter's Redis and give way when it is down: polling is still bounded by
the export-poll rate bucket (or the fallback limiter), and a worker that cannot tell the
load goes on.
"""

import logging
import math
import time
from typing import NamedTuple

import redis
from django.conf import settings

from fhirplatform.limits.codes import EndpointClass
from fhirplatform.limits.costs import CRITICALITY_SHARE
from fhirplatform.limits.store import ADAPTIVE_KEY, GLOBAL_INFLIGHT_KEY, limit_key, limiter_redis
from fhirplatform.redis_clients import RedisBreaker

logger = logging.getLogger(__name__)

# A poll this much earlier than its Retry-After said still counts as on time: clocks and
# networks are not exact.
POLL_TOLERANCE_SECONDS = 0.5
# A process that found Redis down asks again only after LIMITS_REDIS_RETRY_SECONDS: one
# timeout per few seconds, not one per poll or per batch.
_breaker = RedisBreaker(lambda: settings.LIMITS_REDIS_RETRY_SECONDS)


def _unreachable() -> None:
    if _breaker.trip():
        logger.warning("export pacing: the limiter's Redis is unreachable; giving way")


def poll_wait(*, tenant_slug: str, job_id: object, retry_after: int) -> int:
    """0 when this status poll of a running job is on time (and the next one is due in
    `retry_after` seconds); otherwise the seconds still to wait."""
    if not _breaker.available():
        return 0
    key = limit_key(tenant_slug, "export-poll", str(job_id))
    window_ms = max(1, int((retry_after - POLL_TOLERANCE_SECONDS) * 1000))
    try:
        client = limiter_redis()
        if client.set(key, "1", nx=True, px=window_ms):
            _breaker.recover()
            return 0
        remaining_ms = client.pttl(key)
    except redis.RedisError:
        _unreachable()
        return 0
    _breaker.recover()
    return max(1, math.ceil(max(remaining_ms, 0) / 1000 + POLL_TOLERANCE_SECONDS))


class Load(NamedTuple):
    """Requests in flight platform-wide (the limiter's leases), and how many of them hold
    the adaptive limit's export share: the share at which the limiter itself stops
    admitting export requests."""

    inflight: int
    export_share: int

    @property
    def saturated(self) -> bool:
        return self.inflight >= self.export_share


def interactive_load() -> Load:
    """The load now, in one Redis round trip; none when Redis cannot tell."""
    if not _breaker.available():
        return Load(0, 1)
    try:
        client = limiter_redis()
        pipe = client.pipeline(transaction=False)
        pipe.zcount(GLOBAL_INFLIGHT_KEY, time.time(), "+inf")
        pipe.hget(ADAPTIVE_KEY, "limit")
        inflight, limit = pipe.execute()
    except redis.RedisError:
        _unreachable()
        return Load(0, 1)
    _breaker.recover()
    adaptive = float(limit) if limit else float(settings.LIMITS_ADAPTIVE_MAX)
    share = max(1, math.floor(adaptive * CRITICALITY_SHARE[EndpointClass.EXPORT]))
    return Load(int(inflight), share)


def yield_to_interactive(*, worked_seconds: float, max_seconds: float) -> float:
    """The worker's pause after `worked_seconds` of export work; the seconds paused, at
    most `max_seconds` (an export that never ran would never finish):

    - while requests in flight hold the export share, it waits, step by step;
    - while any request is in flight, it rests EXPORT_INTERACTIVE_YIELD times as long as
      it worked (2: it works a third of the time), so that on a busy platform an export
      takes the CPU and the database's attention in turns with the requests, not from
      them;
    - on an idle platform it goes on at once."""
    paused = 0.0
    load = interactive_load()
    while load.saturated and paused < max_seconds:
        time.sleep(settings.EXPORT_YIELD_SECONDS)
        paused += settings.EXPORT_YIELD_SECONDS
        load = interactive_load()
    if load.inflight and paused < max_seconds:
        rest = min(worked_seconds * settings.EXPORT_INTERACTIVE_YIELD, max_seconds - paused)
        time.sleep(rest)
        paused += rest
    return paused
