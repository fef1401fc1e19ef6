"""The one way the platform connects to Redis.

One client (and so one connection pool) per URL and timeout, shared by every caller in
the process: a request borrows a pooled connection instead of opening its own. And the
breaker every Redis user on a request's path keeps, so that a dead Redis costs one
timeout per few seconds, not one per request.
"""

import threading
import time
from collections.abc import Callable

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

_clients: dict[tuple[str, float], redis.Redis] = {}
_lock = threading.Lock()


def redis_client(url: str, *, timeout_seconds: float) -> redis.Redis:
    """A shared client for `url` whose connect and socket timeouts are `timeout_seconds`.

    No retries: every caller is on a request's path and has its own answer to an absent
    Redis (a fallback limiter, a 503, a degraded probe), which must come after one timeout,
    not after several."""
    key = (url, timeout_seconds)
    client = _clients.get(key)
    if client is None:
        with _lock:
            client = _clients.get(key)
            if client is None:
                client = redis.Redis.from_url(
                    url,
                    socket_timeout=timeout_seconds,
                    socket_connect_timeout=timeout_seconds,
                    retry=Retry(NoBackoff(), 0),
                )
                _clients[key] = client
    return client


class RedisBreaker:
    """After a Redis error its owner skips Redis for `retry_seconds()`, then tries once
    more; `down` says whether the last attempt failed. The owner logs and counts."""

    def __init__(self, retry_seconds: Callable[[], float]) -> None:
        self.lock = threading.Lock()
        self._retry_seconds = retry_seconds
        self.down_until = 0.0
        self.down = False

    def available(self) -> bool:
        return time.monotonic() >= self.down_until

    def trip(self) -> bool:
        """Redis failed: skip it for a while. True when it was up until now."""
        with self.lock:
            self.down_until = time.monotonic() + self._retry_seconds()
            was_down, self.down = self.down, True
        return not was_down

    def recover(self) -> bool:
        """Redis answered. True when it was down until now."""
        if not self.down:
            return False
        with self.lock:
            was_down, self.down = self.down, False
        return was_down

    def reset(self) -> None:
        """As a new process starts: Redis is presumed reachable."""
        with self.lock:
            self.down_until, self.down = 0.0, False
