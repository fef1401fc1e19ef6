"""The limiter's Redis: the one client every limits module uses, and how its keys are named.

Every key starts with PREFIX. Keys of one tenant name the tenant right after it; only
the platform-wide keys below and a client's cross-tenant buckets carry none.
"""

import redis
from django.conf import settings

from fhirplatform.redis_clients import redis_client

PREFIX = "fp:rl"
CONFIG_VERSION_KEY = f"{PREFIX}:config-version"
GLOBAL_INFLIGHT_KEY = f"{PREFIX}:global:inflight"
ADAPTIVE_KEY = f"{PREFIX}:global:adaptive"


def limit_key(*parts: str) -> str:
    """A limiter key: the prefix, then `parts` (the tenant slug first, where there is one)."""
    return ":".join((PREFIX, *parts))


def limiter_redis() -> redis.Redis:
    """The shared client to the limiter's Redis (LIMITS_REDIS_URL). Its short timeout is
    the point: a slow or absent Redis costs one timeout, then the fallback answers."""
    return redis_client(
        settings.LIMITS_REDIS_URL, timeout_seconds=settings.LIMITS_REDIS_TIMEOUT_MS / 1000
    )
