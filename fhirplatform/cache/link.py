"""The cache's Redis: one shared client with a short timeout, its Lua scripts, and a breaker.

After a Redis error every cache call answers "bypass" for CACHE_REDIS_RETRY_SECONDS
without trying, then Redis is tried again: a dead Redis costs one timeout per few
seconds, not one per request (as the limiter's breaker in limits/deciders.py).
"""

import logging
from dataclasses import dataclass

import redis
from django.conf import settings
from redis.commands.core import Script

from fhirplatform.cache import lua, metrics
from fhirplatform.redis_clients import RedisBreaker, redis_client

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scripts:
    generations_read: Script
    lookup: Script
    fill: Script
    purge_batch: Script


def cache_redis() -> redis.Redis:
    """The shared client to CACHE_REDIS_URL (no retries: one timeout, then bypass)."""
    return redis_client(
        settings.CACHE_REDIS_URL, timeout_seconds=settings.CACHE_REDIS_TIMEOUT_MS / 1000
    )


class _Link(RedisBreaker):
    def __init__(self) -> None:
        super().__init__(lambda: settings.CACHE_REDIS_RETRY_SECONDS)
        self.client: redis.Redis | None = None
        self.scripts: Scripts | None = None

    def connect(self) -> tuple[redis.Redis, Scripts]:
        client = cache_redis()
        with self.lock:
            if client is not self.client or self.scripts is None:
                # Another CACHE_REDIS_URL (tests, a settings change): a fresh start there.
                self.scripts = Scripts(
                    generations_read=client.register_script(lua.GENERATIONS_READ),
                    lookup=client.register_script(lua.LOOKUP),
                    fill=client.register_script(lua.FILL),
                    purge_batch=client.register_script(lua.PURGE_BATCH),
                )
                self.client = client
                self.down_until, self.down = 0.0, False
            return client, self.scripts

    def mark_down(self, exc: Exception, *, operation: str) -> None:
        metrics.redis_errors.labels(operation=operation).inc()
        newly_down = self.trip()
        metrics.redis_down.set(1)
        if newly_down:
            logger.warning(
                "cache: Redis unreachable, requests bypass the cache",
                extra={"error": f"{type(exc).__name__}: {exc}", "operation": operation},
            )

    def mark_up(self) -> None:
        if self.recover():
            metrics.redis_down.set(0)
            logger.warning("cache: Redis reachable again, caching resumed")

    def reset(self) -> None:
        with self.lock:
            self.client, self.scripts = None, None
        super().reset()
        metrics.redis_down.set(0)


link = _Link()
