"""One Redis round trip per request: a release rides with the process's next admission,
an idle process's flusher frees its slots within the delay, caps stay exact, queued
releases outlive a Redis outage, and the caller generation comes back with every
admission."""

import os
import threading
import time
from threading import Condition

import pytest

from fhirplatform.errors import FhirError
from fhirplatform.limits.codes import EndpointClass, ThrottleReason
from fhirplatform.limits.deciders import pending_releases
from fhirplatform.limits.engine import (
    limit_admit,
    limit_releases_flush,
    limiter_generation_seen,
)
from fhirplatform.limits.models import LimitOverride
from fhirplatform.limits.store import GLOBAL_INFLIGHT_KEY
from scripts.loopback import free_port
from tenants.token_cache import CALLER_GENERATION_KEY
from tests.limits.conftest import evalsha_calls, plan_make, redis_calls

pytestmark = pytest.mark.django_db


def admit(caller):
    return limit_admit(caller=caller, endpoint_class=EndpointClass.READ, resource_type="Patient")


def reason_of(error: FhirError) -> str:
    return error.outcome()["issue"][0]["details"]["coding"][0]["code"]


def slot_key(caller) -> str:
    return f"fp:rl:{caller.tenant.slug}:inflight:{caller.client.client_id}"


def test_a_release_rides_with_the_next_admission(own_limiter, cast, new_caller, settings):
    settings.LIMITS_RELEASE_DELAY_MS = 60_000  # the flusher stays out of this count
    caller = new_caller(cast.tenant_a)
    admit(caller).release()  # loads the script, caches the limits
    limit_releases_flush()
    before = redis_calls(own_limiter)
    leases = []
    for _ in range(20):
        admission = admit(caller)
        # The previous request's slot was given back by this very call.
        assert own_limiter.zrange(slot_key(caller), 0, -1) == [admission.lease_id.encode()]
        leases.append(admission.lease_id)
        admission.release()
    spent = redis_calls(own_limiter) - before
    assert spent["evalsha"] == 20
    assert spent["eval"] == spent["script|load"] == 0
    # The last release is still queued; the flusher (or the next admission) sends it.
    assert own_limiter.zcard(slot_key(caller)) == 1 and pending_releases.pending() == 1
    assert limit_releases_flush()
    assert own_limiter.zcard(slot_key(caller)) == 0
    assert own_limiter.zcard(GLOBAL_INFLIGHT_KEY) == 0
    assert evalsha_calls(own_limiter) - before["evalsha"] == 21


def test_an_idle_process_frees_its_slot_within_the_delay(own_limiter, cast, new_caller, settings):
    caller = new_caller(cast.tenant_a, plan_make(concurrency=1))
    admit(caller).release()
    limit_releases_flush()
    for delay_ms in (200, 5):
        settings.LIMITS_RELEASE_DELAY_MS = delay_ms
        admission = admit(caller)
        admission.release()
        released_at = time.monotonic()
        if delay_ms == 200:
            assert own_limiter.zcard(slot_key(caller)) == 1  # held a little longer, not less
        while own_limiter.zcard(slot_key(caller)):
            assert time.monotonic() - released_at < 1.0, "the flusher did not free the slot"
            time.sleep(0.002)
        freed_after = time.monotonic() - released_at
        assert freed_after >= delay_ms / 1000 - 0.002
    admit(caller).release()  # the slot is free for the client's next request


def test_a_stream_of_requests_wakes_the_flusher_once(
    own_limiter, cast, new_caller, settings, monkeypatch
):
    settings.LIMITS_RELEASE_DELAY_MS = 500  # longer than the stream below
    caller = new_caller(cast.tenant_a)
    admit(caller).release()
    limit_releases_flush()
    ready = pending_releases._ready
    wakes = []

    def notify(n: int = 1) -> None:
        wakes.append(n)
        Condition.notify(ready, n)

    monkeypatch.setattr(ready, "notify", notify)
    started = time.monotonic()
    for _ in range(20):
        admit(caller).release()
    assert time.monotonic() - started < 0.5, "the stream outlasted the delay"
    # At most the first release finds the flusher asleep until woken; the others are due
    # after the time it wakes at anyway.
    assert len(wakes) <= 1
    while own_limiter.zcard(slot_key(caller)):  # and the last is sent on time all the same
        assert time.monotonic() - started < 2.0, "the flusher did not free the slot"
        time.sleep(0.005)


def test_slot_caps_stay_exact_under_concurrent_requests(own_limiter, cast, new_caller, settings):
    cap = 3
    LimitOverride.objects.create(tenant=cast.tenant_a, per_minute=10**6)  # rates stay out
    # The grant's read bucket too: a fast machine admits more than the default burst.
    caller = new_caller(cast.tenant_a, plan_make(concurrency=cap, read_per_minute=10**6))
    admit(caller).release()  # caches the limits: the threads read no database
    lock = threading.Lock()
    in_flight, most, admitted = 0, 0, 0
    refusals: list[str] = []
    stop_at = time.monotonic() + 2.0

    def client() -> None:
        nonlocal in_flight, most, admitted
        while time.monotonic() < stop_at:
            try:
                admission = admit(caller)
            except FhirError as error:
                with lock:
                    refusals.append(reason_of(error))
                time.sleep(0.001)
                continue
            with lock:
                in_flight += 1
                most = max(most, in_flight)
                admitted += 1
            time.sleep(0.003)  # the handler
            with lock:
                in_flight -= 1
            admission.release()

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    held = []
    while any(thread.is_alive() for thread in threads):
        held.append(own_limiter.zcard(slot_key(caller)))
        time.sleep(0.001)
    for thread in threads:
        thread.join()
    assert admitted > 50 and refusals  # the cap was reached, and reached often
    assert set(refusals) == {ThrottleReason.CONCURRENCY}
    assert most <= cap and max(held) <= cap
    assert limit_releases_flush()
    assert own_limiter.zcard(slot_key(caller)) == 0


def test_the_caller_generation_comes_back_with_the_admission(
    own_limiter, cast, new_caller, settings
):
    caller = new_caller(cast.tenant_a)
    assert admit(caller).generation == 0  # no counter yet
    own_limiter.set(CALLER_GENERATION_KEY, 41)
    own_limiter.incr(CALLER_GENERATION_KEY)
    asked_at = time.monotonic()
    admission = admit(caller)
    assert admission.generation == 42
    seen = limiter_generation_seen()
    assert seen is not None and seen.value == 42 and seen.seen_at >= asked_at
    # A refusal reads it too.
    limited = new_caller(cast.tenant_a, plan_make(read_per_minute=6))
    admit(limited)
    own_limiter.incr(CALLER_GENERATION_KEY)
    with pytest.raises(FhirError):
        admit(limited)
    seen = limiter_generation_seen()
    assert seen is not None and seen.value == 43

    # The local fallback cannot know it.
    settings.LIMITS_REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    fallback = admit(caller)
    assert fallback.generation is None and limiter_generation_seen() is None
    fallback.release()


def test_queued_releases_outlive_a_redis_outage(own_limiter, cast, new_caller, settings):
    settings.LIMITS_RELEASE_DELAY_MS = 60_000  # only this test sends
    caller = new_caller(cast.tenant_a, plan_make(concurrency=1))
    admission = admit(caller)
    own_url = settings.LIMITS_REDIS_URL
    settings.LIMITS_REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # Redis is gone
    admission.release()  # never raises: it only queues
    assert not limit_releases_flush()
    assert pending_releases.pending() == 1  # kept for later, not lost
    settings.LIMITS_REDIS_URL = own_url
    time.sleep(settings.LIMITS_REDIS_RETRY_SECONDS + 0.1)  # the breaker's retry interval
    assert limit_releases_flush() and pending_releases.pending() == 0
    assert own_limiter.zcard(slot_key(caller)) == 0

    # A release whose lease Redis has dropped meanwhile is not kept for ever.
    settings.LIMITS_LEASE_SECONDS = 1
    admission = admit(caller)
    settings.LIMITS_REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    admission.release()
    time.sleep(1.1)
    assert not limit_releases_flush()
    assert pending_releases.pending() == 0


def test_a_forked_worker_owns_neither_the_queue_nor_the_flusher(
    own_limiter, cast, new_caller, settings
):
    settings.LIMITS_RELEASE_DELAY_MS = 50
    caller = new_caller(cast.tenant_a, plan_make(concurrency=2))
    admit(caller).release()
    limit_releases_flush()
    parents = admit(caller)
    parents.release()  # queued in this process when it forks
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the worker: its own queue, its own flusher, same cached limits
        os.close(read)
        report = f"{pending_releases.pending()}"
        try:
            own = admit(caller)
            own.release()
            deadline = time.monotonic() + 2
            while own_limiter.zrank(slot_key(caller), own.lease_id) is not None:
                if time.monotonic() > deadline:
                    report += " stuck"
                    break
                time.sleep(0.005)
            else:
                report += " freed"
        finally:
            os.write(write, report.encode())
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(child, 0)
    with os.fdopen(read) as pipe:
        report = pipe.read()
    assert status == 0
    assert report == "0 freed"  # nothing inherited; its flusher started and sent
    limit_releases_flush()
    assert own_limiter.zcard(slot_key(caller)) == 0  # the parent's own release went too
