"""The one way the platform connects to Redis.

One client (and so one connection pool) per URL and timeout, shared by every caller in
the process: a request borrows a pooled connection instead of opening its own.
"""

import threading

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
