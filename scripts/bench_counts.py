"""Counts for scripts/bench_fhir.py: what one platform request of each interaction sends
to PostgreSQL and Redis, counted on the wire by the proxies of scripts/wire_count.py.

A platform gunicorn of its own (1 worker, 1 thread: one process cache, one connection)
runs with every connection through a proxy: DATABASE_URL through a PostgreSQL counter,
REDIS_URL and LIMITS_REDIS_URL (the cache and the limiter) through a Redis counter, and
Celery's broker and result URLs through a second one, so that broker traffic is reported
apart instead of being mistaken for the limiter's.
"""

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import requests

from scripts.bench_load import CREATE_BODY
from scripts.loopback import gunicorn_server
from scripts.wire_count import PostgresCounter, RedisCounter

# Pause after the requests for work they leave behind; refusals are written to the
# database once a second by a background thread, so a refused read waits for that.
SETTLE_SECONDS = 0.3
REFUSAL_SETTLE_SECONDS = 1.5
# A finished request's release rides with the next admission if it comes within
# LIMITS_RELEASE_DELAY_MS (5 by default), as it does under load. Requests sent one at a
# time follow each other within a few milliseconds, more on a busy machine: the counting
# server waits longer, so that every release but the last rides as in a stream, whatever
# the machine's pace. The last one is sent alone within the settling pause.
RELEASE_DELAY_MS = 100
assert RELEASE_DELAY_MS / 1000 < SETTLE_SECONDS


@dataclass(frozen=True)
class Counters:
    postgres: PostgresCounter
    redis: RedisCounter  # the cache's and the limiter's
    broker: RedisCounter  # Celery's broker and results


def _server_of(url: str) -> tuple[str | None, int | None]:
    parsed = urlparse(url)
    return parsed.hostname, parsed.port


def counting_environment(base: dict[str, str], counters: Counters) -> dict[str, str]:
    """The platform's environment with every connection through a counting proxy."""
    redis_url = base.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    urls = {
        "LIMITS_REDIS_URL": base.get("LIMITS_REDIS_URL") or redis_url,
        "CELERY_BROKER_URL": base.get("CELERY_BROKER_URL") or redis_url,
        "CELERY_RESULT_BACKEND": base.get("CELERY_RESULT_BACKEND") or redis_url,
    }
    for name, url in urls.items():
        if _server_of(url) != _server_of(redis_url):
            raise SystemExit(f"counting needs {name} on REDIS_URL's server, not {url}")
    return base | {
        "LIMITS_RELEASE_DELAY_MS": str(RELEASE_DELAY_MS),
        "DATABASE_URL": counters.postgres.url_for(base["DATABASE_URL"]),
        "REDIS_URL": counters.redis.url_for(redis_url),
        "LIMITS_REDIS_URL": counters.redis.url_for(urls["LIMITS_REDIS_URL"]),
        "CELERY_BROKER_URL": counters.broker.url_for(urls["CELERY_BROKER_URL"]),
        "CELERY_RESULT_BACKEND": counters.broker.url_for(urls["CELERY_RESULT_BACKEND"]),
    }


@contextmanager
def counting_platform(env: dict[str, str], log: Path) -> Iterator[tuple[str, Counters]]:
    """A platform server whose every connection is counted; yields its URL and counters."""
    redis_url = env.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    with ExitStack() as stack:
        counters = Counters(
            postgres=stack.enter_context(PostgresCounter.for_url(env["DATABASE_URL"])),
            redis=stack.enter_context(RedisCounter.for_url(redis_url)),
            broker=stack.enter_context(RedisCounter.for_url(redis_url)),
        )
        server = stack.enter_context(
            gunicorn_server(
                env=counting_environment(env, counters),
                workers=1,
                threads=1,
                log=log,
                startup_seconds=240,
            )
        )
        yield server.url, counters


def count_interaction(
    counters: Counters, send: Callable[[], requests.Response], count: int, settle: float
) -> dict[str, Any]:
    """One warm-up request, then `count` requests one at a time: what they sent, per
    request, and what the first of them sent, statement by statement."""
    send()
    time.sleep(SETTLE_SECONDS)
    postgres, cache, broker = (
        counters.postgres.snapshot(),
        counters.redis.snapshot(),
        counters.broker.snapshot(),
    )
    statuses: dict[int, int] = {}
    first_sql: tuple[str, ...] = ()
    first_redis: tuple[str, ...] = ()
    for number in range(count):
        status = send().status_code
        statuses[status] = statuses.get(status, 0) + 1
        if number == 0:
            first_sql = counters.postgres.delta(postgres).texts
            first_redis = counters.redis.delta(cache).texts
    time.sleep(settle)
    sent_pg = counters.postgres.delta(postgres)
    sent_redis = counters.redis.delta(cache)
    sent_broker = counters.broker.delta(broker)
    return {
        "requests": count,
        "statuses": statuses,
        "sql_statements": sent_pg.statements / count,
        "pg_round_trips": sent_pg.round_trips / count,
        "pg_connections_opened": sent_pg.connections,
        "redis_commands": sent_redis.commands / count,
        "redis_round_trips": sent_redis.round_trips / count,
        "redis_connections_opened": sent_redis.connections,
        "redis_by_name": {name: n / count for name, n in sent_redis.by_name.items()},
        "broker_commands": sent_broker.commands / count,
        "opaque_connections": sent_pg.opaque_connections + sent_redis.opaque_connections,
        "first_request": {"sql": list(first_sql), "redis": list(first_redis)},
    }


@dataclass(frozen=True)
class Callers:
    """The headers of the benchmark's two callers: `served` on a count-only plan (and
    `writer`, the same with a body), `refused` on a plan that refuses nearly every read."""

    served: dict[str, str]
    writer: dict[str, str]
    refused: dict[str, str]


def interactions_count(
    env: dict[str, str],
    fhir_path: str,
    callers: Callers,
    ids: list[str],
    code: str,
    count: int,
    log: Path,
) -> dict[str, dict[str, Any]]:
    """Statements, round trips and Redis commands per read (with a token already used
    once), search, create and refused read."""
    with counting_platform(env, log) as (url, counters), requests.Session() as session:
        base = url + fhir_path
        patients = iter(ids * (8 * count // max(len(ids), 1) + 8))

        def get(path: str, headers: dict[str, str]) -> Callable[[], requests.Response]:
            def send() -> requests.Response:
                url = f"{base}/{path.format(next(patients))}"
                return session.get(url, headers=headers, timeout=30)

            return send

        def create() -> requests.Response:
            body = CREATE_BODY % (next(patients), 70)
            return session.post(
                f"{base}/Observation", data=body, headers=callers.writer, timeout=30
            )

        search = "Observation?patient={}&code=http://loinc.org|" + code + "&date=ge2018-01-01"
        interactions: list[tuple[str, Callable[[], requests.Response], float]] = [
            ("read", get("Patient/{}", callers.served), SETTLE_SECONDS),
            ("search", get(search, callers.served), SETTLE_SECONDS),
            ("create", create, SETTLE_SECONDS),
            ("refused read", get("Patient/{}", callers.refused), REFUSAL_SETTLE_SECONDS),
        ]
        return {
            name: count_interaction(counters, send, count, settle)
            for name, send, settle in interactions
        }
