"""The export worker's pauses, read from the limiter's own in-flight leases in Redis."""

import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from django.conf import settings

from fhirplatform.fhir.export import pacing
from fhirplatform.fhir.export.pacing import Load, interactive_load, poll_wait, yield_to_interactive
from fhirplatform.limits.store import GLOBAL_INFLIGHT_KEY


@pytest.fixture
def leases() -> Iterator[list[str]]:
    """Leases this test puts in the platform's in-flight set (scored by their expiry, as
    the limiter's are), removed afterwards."""
    client = redis.Redis.from_url(settings.LIMITS_REDIS_URL)
    added: list[str] = []
    yield added
    if added:
        client.zrem(GLOBAL_INFLIGHT_KEY, *added)


def _lease(leases: list[str], n: int = 1) -> None:
    client = redis.Redis.from_url(settings.LIMITS_REDIS_URL)
    names = [f"test-{uuid.uuid4().hex}" for _ in range(n)]
    client.zadd(GLOBAL_INFLIGHT_KEY, dict.fromkeys(names, time.time() + 60))
    leases.extend(names)


def test_a_request_in_flight_makes_the_worker_take_turns(leases: list[str], settings) -> None:
    settings.EXPORT_INTERACTIVE_YIELD = 1.0
    _lease(leases)
    assert interactive_load().inflight >= 1
    assert yield_to_interactive(worked_seconds=0.2, max_seconds=5) == pytest.approx(0.2)
    # Never past what is left of the file's budget.
    assert yield_to_interactive(worked_seconds=0.2, max_seconds=0.05) == pytest.approx(0.05)


def test_the_export_share_held_makes_the_worker_wait(leases: list[str], settings) -> None:
    settings.EXPORT_INTERACTIVE_YIELD = 0.0
    settings.EXPORT_YIELD_SECONDS = 0.01
    load = interactive_load()
    _lease(leases, load.export_share)
    assert interactive_load().saturated
    assert yield_to_interactive(worked_seconds=0.0, max_seconds=0.05) == pytest.approx(0.05)


def test_a_redis_that_is_down_is_given_way_to_and_not_asked_again_at_once(settings) -> None:
    """Polls are then bounded by the export-poll bucket (or the fallback limiter) alone,
    and the worker goes on; neither waits on a dead Redis again for a few seconds."""
    settings.LIMITS_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    pacing._breaker.reset()
    try:
        assert poll_wait(tenant_slug="t", job_id="j", retry_after=2) == 0
        assert pacing._breaker.down and not pacing._breaker.available()
        assert interactive_load() == Load(inflight=0, export_share=1)
        assert yield_to_interactive(worked_seconds=1.0, max_seconds=5) == 0
    finally:
        pacing._breaker.reset()
