"""The limit engine against real Redis: bucket arithmetic, every reason code, leases,
the adaptive limit, dry-run, the kill switch, config changes and throttle events.
(Round trips, folded releases and the caller generation: test_releases.py; the refusal
memo: test_memo.py.)"""

import time

import pytest
from django.db.models import Sum

from fhirplatform.errors import FhirError
from fhirplatform.limits.codes import EndpointClass, ThrottleReason
from fhirplatform.limits.engine import Admission, limit_admit, limit_releases_flush
from fhirplatform.limits.models import LimitOverride, ThrottleEvent
from fhirplatform.limits.services import (
    limit_override_save,
    limiter_switch_set,
    throttle_events_flush,
)
from fhirplatform.limits.store import ADAPTIVE_KEY
from tests.limits.conftest import plan_make, ratelimit_policies

pytestmark = pytest.mark.django_db

READ, SEARCH = EndpointClass.READ, EndpointClass.SEARCH


def admit(caller, endpoint_class=READ, resource_type="Patient", cost=1) -> Admission:
    return limit_admit(
        caller=caller, endpoint_class=endpoint_class, resource_type=resource_type, cost=cost
    )


def refusal(caller, **kwargs) -> FhirError:
    with pytest.raises(FhirError) as caught:
        admit(caller, **kwargs)
    return caught.value


def sent() -> None:
    """The queued releases reach Redis now, not with the next admission."""
    assert limit_releases_flush()


def reason_of(error: FhirError) -> str:
    coding = error.outcome()["issue"][0]["details"]["coding"][0]
    return coding["code"]


def test_bucket_arithmetic_is_exact(limiter_redis, cast, new_caller):
    # 60 per minute with a 10 s burst: a depth of 10 units, one unit back per second.
    caller = new_caller(cast.tenant_a, plan_make(read_per_minute=60))
    remaining = []
    for _ in range(10):
        admission = admit(caller)
        remaining.append(ratelimit_policies(admission.headers)["endpoint-read"]["r"])
        admission.release()
    assert remaining == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    parsed = ratelimit_policies(admission.headers)["endpoint-read"]
    assert (parsed["q"], parsed["w"], parsed["t"]) == (60, 60, 10)

    error = refusal(caller)
    assert error.status == 429
    assert reason_of(error) == ThrottleReason.ENDPOINT_RATE
    assert 1 <= int(error.headers["Retry-After"]) <= 2
    assert ratelimit_policies(error.headers)["endpoint-read"]["r"] == 0

    time.sleep(1.05)  # exactly one unit has come back
    admit(caller).release()
    assert reason_of(refusal(caller)) == ThrottleReason.ENDPOINT_RATE


def test_weighted_cost_and_oversized_request(limiter_redis, cast, new_caller):
    caller = new_caller(cast.tenant_a, plan_make(search_per_minute=60))
    admission = admit(caller, endpoint_class=SEARCH, cost=3)
    assert ratelimit_policies(admission.headers)["endpoint-search"]["r"] == 7
    admission.release()
    limiter_redis.flushdb()
    # A request costing more than the depth passes into a full bucket, then pays it back.
    admit(caller, endpoint_class=SEARCH, cost=15).release()
    error = refusal(caller, endpoint_class=SEARCH)
    assert reason_of(error) == ThrottleReason.ENDPOINT_RATE
    assert int(error.headers["Retry-After"]) >= 6  # 5 units over the depth + 1 for this request


def test_tenant_rate_is_shared_by_all_clients_of_the_tenant(limiter_redis, cast, new_caller):
    LimitOverride.objects.create(tenant=cast.tenant_a, per_minute=120)  # depth 20
    first, second = new_caller(cast.tenant_a), new_caller(cast.tenant_a)
    for _ in range(10):
        admit(first).release()
        admit(second).release()
    error = refusal(first)
    assert error.status == 429 and reason_of(error) == ThrottleReason.TENANT_RATE
    assert "tenant 'provider-a'" in error.outcome()["issue"][0]["diagnostics"]
    assert error.outcome()["issue"][0]["code"] == "throttled"


def test_the_other_tenant_cannot_be_throttled_by_tenant_a(limiter_redis, cast, new_caller):
    LimitOverride.objects.create(tenant=cast.tenant_a, per_minute=60)
    flooder, bystander = new_caller(cast.tenant_a), new_caller(cast.tenant_b)
    for _ in range(10):
        admit(flooder).release()
    assert reason_of(refusal(flooder)) == ThrottleReason.TENANT_RATE
    for _ in range(10):
        admission = admit(bystander)
        assert ratelimit_policies(admission.headers)["tenant-read"]["q"] == 600
        admission.release()
    assert not any(b"provider-a" in key for key in limiter_redis.keys("fp:rl:payer-b:*"))


def test_client_rate_spans_tenants(limiter_redis, cast, new_caller):
    caller = new_caller(cast.tenant_a)
    LimitOverride.objects.create(client=caller.client, endpoint_class=READ, per_minute=12)
    admit(caller).release()
    admit(caller).release()
    error = refusal(caller)
    assert reason_of(error) == ThrottleReason.CLIENT_RATE
    assert "across all tenants" in error.outcome()["issue"][0]["diagnostics"]


def test_resource_rate_applies_to_one_type_only(limiter_redis, cast, new_caller):
    caller = new_caller(cast.tenant_a)
    LimitOverride.objects.create(tenant=cast.tenant_a, resource_type="Binary", per_minute=6)
    admission = admit(caller, resource_type="Binary")
    assert "resource-Binary" in ratelimit_policies(admission.headers)
    admission.release()
    assert reason_of(refusal(caller, resource_type="Binary")) == ThrottleReason.RESOURCE_RATE
    admit(caller, resource_type="Patient").release()


def test_daily_quota(limiter_redis, cast, new_caller):
    caller = new_caller(cast.tenant_a, plan_make(daily_quota=5))
    admit(caller, cost=2).release()
    admit(caller, cost=3).release()
    error = refusal(caller)
    assert reason_of(error) == ThrottleReason.DAILY_QUOTA
    assert ratelimit_policies(error.headers)["daily"]["q"] == 5
    # Never earlier than the reset: the quota comes back at midnight UTC.
    seconds_to_midnight = 86400 - int(time.time()) % 86400
    assert int(error.headers["Retry-After"]) >= seconds_to_midnight - 1


def test_concurrency_slots_and_release(limiter_redis, cast, new_caller):
    caller = new_caller(cast.tenant_a, plan_make(concurrency=2))
    held = [admit(caller), admit(caller)]
    error = refusal(caller)
    assert error.status == 429 and reason_of(error) == ThrottleReason.CONCURRENCY
    held.pop().release()
    admit(caller).release()


def test_a_crashed_worker_never_leaks_a_slot(limiter_redis, cast, new_caller, settings):
    settings.LIMITS_LEASE_SECONDS = 1
    caller = new_caller(cast.tenant_a, plan_make(concurrency=1))
    admit(caller)  # never released, as if the worker died mid-request
    assert reason_of(refusal(caller)) == ThrottleReason.CONCURRENCY
    time.sleep(1.1)
    admit(caller).release()


def test_overload_sheds_search_and_sandbox_before_reads(limiter_redis, cast, new_caller):
    limiter_redis.hset(ADAPTIVE_KEY, "limit", "4")
    production = new_caller(cast.tenant_a)
    sandbox = new_caller(cast.tenant_a, plan_make(priority=10))
    held = [admit(production) for _ in range(3)]
    # 3 in flight of 4: search may use 70% (2), sandbox reads 80% (3), reads 100% (4).
    error = refusal(production, endpoint_class=SEARCH)
    assert error.status == 503 and reason_of(error) == ThrottleReason.OVERLOAD
    assert int(error.headers["Retry-After"]) >= 1
    assert reason_of(refusal(sandbox)) == ThrottleReason.OVERLOAD
    held.append(admit(production))
    for admission in held:
        admission.release()
    admit(production, endpoint_class=SEARCH).release()


def test_adaptive_limit_cuts_on_errors_and_grows_on_success(
    limiter_redis, cast, new_caller, settings
):
    settings.LIMITS_ADAPTIVE_MAX = 100
    caller = new_caller(cast.tenant_a)
    limiter_redis.hset(ADAPTIVE_KEY, "limit", "50")
    admit(caller).release(status=500)
    sent()
    assert float(limiter_redis.hget(ADAPTIVE_KEY, "limit")) == pytest.approx(45)
    admit(caller).release(status=500)  # at most one cut per second
    sent()
    assert float(limiter_redis.hget(ADAPTIVE_KEY, "limit")) == pytest.approx(45)
    admit(caller).release(status=200)
    sent()
    assert float(limiter_redis.hget(ADAPTIVE_KEY, "limit")) == pytest.approx(45 + 1 / 45)


def test_dry_run_plan_reports_but_never_refuses(limiter_redis, cast, new_caller):
    caller = new_caller(cast.tenant_a, plan_make(read_per_minute=6, dry_run=True))
    for _ in range(5):
        admission = admit(caller)
        admission.release()
    assert ratelimit_policies(admission.headers)["endpoint-read"]["r"] == 0
    throttle_events_flush()
    events = ThrottleEvent.objects.filter(client=caller.client)
    assert (
        events.filter(dry_run=True, reason=ThrottleReason.ENDPOINT_RATE).aggregate(n=Sum("count"))[
            "n"
        ]
        == 4
    )


def test_kill_switch_turns_every_limit_off(
    limiter_redis, cast, new_caller, django_capture_on_commit_callbacks
):
    caller = new_caller(cast.tenant_a, plan_make(read_per_minute=6, concurrency=1))
    admit(caller).release()
    assert refusal(caller).status == 429
    with django_capture_on_commit_callbacks(execute=True):
        limiter_switch_set(enabled=False)
    held = [admit(caller) for _ in range(5)]  # the very next request is not refused
    assert "RateLimit" in held[-1].headers
    for admission in held:
        admission.release()
    with django_capture_on_commit_callbacks(execute=True):
        limiter_switch_set(enabled=True)
    # The process that made the change enforces at once (others at their next decision).
    assert refusal(caller).status == 429


def test_a_closed_policy_refuses_and_under_the_kill_switch_only_reports(
    limiter_redis, cast, new_caller
):
    caller = new_caller(cast.tenant_a)
    LimitOverride.objects.create(tenant=cast.tenant_a, resource_type="Binary", per_minute=0)
    error = refusal(caller, resource_type="Binary")
    assert error.status == 429 and reason_of(error) == ThrottleReason.RESOURCE_RATE
    assert "allows no read requests" in error.outcome()["issue"][0]["diagnostics"]
    limiter_switch_set(enabled=False)
    unlimited = new_caller(cast.tenant_a)  # a caller whose limits are not cached yet
    admission = admit(unlimited, resource_type="Binary")
    assert ratelimit_policies(admission.headers)["resource-Binary"]["q"] == 0
    admission.release()


def test_an_admin_change_applies_without_waiting_for_the_cache(
    limiter_redis, cast, new_caller, django_capture_on_commit_callbacks, settings
):
    settings.LIMITS_CONFIG_CACHE_SECONDS = 3600  # prove the version bump, not the TTL, did it
    caller = new_caller(cast.tenant_a)
    admit(caller).release()
    with django_capture_on_commit_callbacks(execute=True):
        limit_override_save(
            override=LimitOverride(
                tenant=cast.tenant_a, client=caller.client, endpoint_class=READ, per_minute=6
            )
        )
    # The process that saved it decides the very next request under the new limit,
    # admitted or not: its headers say so. (Other processes once their next decision in
    # Redis has read the new config version: test_memo.py.)
    try:
        headers = admit(caller).headers
    except FhirError as error:
        headers = error.headers
    assert ratelimit_policies(headers)["endpoint-read"]["q"] == 6


def test_throttle_events_are_aggregated_per_second(limiter_redis, cast, new_caller):
    caller = new_caller(cast.tenant_a, plan_make(read_per_minute=6))
    admit(caller).release()
    for _ in range(200):
        with pytest.raises(FhirError):
            admit(caller)
    assert throttle_events_flush() <= 2  # one row per second, however many refusals
    events = ThrottleEvent.objects.filter(client=caller.client, reason=ThrottleReason.ENDPOINT_RATE)
    assert events.aggregate(n=Sum("count"))["n"] == 200
    assert {e.endpoint_class for e in events} == {"read"}
    assert {e.tenant_id for e in events} == {cast.tenant_a.pk}


def test_slow_responses_cut_the_adaptive_limit(limiter_redis, cast, new_caller, settings):
    settings.LIMITS_ADAPTIVE_MAX = 100
    caller = new_caller(cast.tenant_a)
    limiter_redis.hset(ADAPTIVE_KEY, "limit", "40")
    admission = admit(caller)
    time.sleep(0.55)  # above the 500 ms latency target of a read
    admission.release(status=200)
    sent()
    assert float(limiter_redis.hget(ADAPTIVE_KEY, "limit")) == pytest.approx(36)


def test_retry_after_is_never_before_the_reset_and_is_jittered(limiter_redis, cast, new_caller):
    caller = new_caller(cast.tenant_a, plan_make(read_per_minute=6))  # one unit per 10 s
    admit(caller).release()
    waits = set()
    for _ in range(30):
        error = refusal(caller)
        wait = ratelimit_policies(error.headers)["endpoint-read"]["t"]
        retry_after = int(error.headers["Retry-After"])
        assert wait <= retry_after <= wait + 2
        waits.add(retry_after - wait)
    assert len(waits) > 1  # refused clients do not all come back in the same second


def test_portal_selector_lists_a_tenants_events_only(limiter_redis, cast, new_caller):
    from fhirplatform.limits.selectors import throttle_events_for

    caller_a = new_caller(cast.tenant_a, plan_make(read_per_minute=6))
    caller_b = new_caller(cast.tenant_b, plan_make(read_per_minute=6))
    for caller in (caller_a, caller_b):
        admit(caller).release()
        refusal(caller)
    throttle_events_flush()
    events_a = throttle_events_for(tenant=cast.tenant_a, client=caller_a.client)
    assert [e.reason for e in events_a] == [ThrottleReason.ENDPOINT_RATE]
    assert all(e.tenant_id == cast.tenant_a.pk for e in throttle_events_for(tenant=cast.tenant_a))
    assert not throttle_events_for(tenant=cast.tenant_b, client=caller_a.client)
