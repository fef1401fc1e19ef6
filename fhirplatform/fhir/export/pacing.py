"""What keeps exports fair to everyone else: polls no faster than the Retry-After a
client was given, and a worker that pauses while interactive traffic is near the
adaptive limit's share for exports.

Both read the limiter's Redis and give way when it is down: polling is still bounded by
the export-poll rate bucket (or the fallback limiter), and a worker that cannot tell the
load goes on.
"""

import logging
import math
import time

import redis
from django.conf import settings

from fhirplatform.limits.codes import EndpointClass
from fhirplatform.limits.costs import CRITICALITY_SHARE
from fhirplatform.limits.store import ADAPTIVE_KEY, GLOBAL_INFLIGHT_KEY, limit_key, limiter_redis

logger = logging.getLogger(__name__)

# A poll this much earlier than its Retry-After said still counts as on time: clocks and
# networks are not exact.
POLL_TOLERANCE_SECONDS = 0.5


def poll_wait(*, tenant_slug: str, job_id: object, retry_after: int) -> int:
    """0 when this status poll of a running job is on time (and the next one is due in
    `retry_after` seconds); otherwise the seconds still to wait."""
    key = limit_key(tenant_slug, "export-poll", str(job_id))
    window_ms = max(1, int((retry_after - POLL_TOLERANCE_SECONDS) * 1000))
    try:
        client = limiter_redis()
        if client.set(key, "1", nx=True, px=window_ms):
            return 0
        remaining_ms = client.pttl(key)
    except redis.RedisError:
        return 0
    return max(1, math.ceil(max(remaining_ms, 0) / 1000 + POLL_TOLERANCE_SECONDS))


def interactive_pressure() -> bool:
    """Whether requests in flight platform-wide hold the export share of the adaptive
    limit: the share at which the limiter itself stops admitting export requests."""
    try:
        client = limiter_redis()
        pipe = client.pipeline(transaction=False)
        pipe.zcount(GLOBAL_INFLIGHT_KEY, time.time(), "+inf")
        pipe.hget(ADAPTIVE_KEY, "limit")
        inflight, limit = pipe.execute()
    except redis.RedisError:
        return False
    adaptive = float(limit) if limit else float(settings.LIMITS_ADAPTIVE_MAX)
    return int(inflight) >= max(1, math.floor(adaptive * CRITICALITY_SHARE[EndpointClass.EXPORT]))


def yield_to_interactive(*, max_seconds: float) -> float:
    """Pause while interactive traffic holds the export share, for `max_seconds` at most
    (an export that never ran would never finish); the seconds paused."""
    paused = 0.0
    while paused < max_seconds and interactive_pressure():
        time.sleep(settings.EXPORT_YIELD_SECONDS)
        paused += settings.EXPORT_YIELD_SECONDS
    return paused
