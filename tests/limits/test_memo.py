"""The refusal memo: a client past its limit is refused in process, without a Redis call,
exactly as Redis would refuse it, for as long as the refusal is certain and at most
LIMITS_REFUSAL_MEMO_SECONDS; a config change drops it."""

import re
import time

import pytest
from django.db.models import Sum

from fhirplatform.errors import FhirError
from fhirplatform.limits.codes import EndpointClass, ThrottleReason
from fhirplatform.limits.engine import limit_admit, limit_refusal_known
from fhirplatform.limits.memo import refusal_memo
from fhirplatform.limits.models import LimitOverride, ThrottleEvent
from fhirplatform.limits.services import limit_override_save, throttle_events_flush
from fhirplatform.limits.store import CONFIG_VERSION_KEY
from tests.limits.conftest import evalsha_calls, plan_make, ratelimit_policies

pytestmark = pytest.mark.django_db

READ = EndpointClass.READ


@pytest.fixture(autouse=True)
def releases_ride_along(settings):
    """Releases go with the next admission only: the flusher adds no call to the counts."""
    settings.LIMITS_RELEASE_DELAY_MS = 60_000


def admit(caller, cost=1):
    return limit_admit(caller=caller, endpoint_class=READ, resource_type="Patient", cost=cost)


def refusal(caller, cost=1) -> FhirError:
    with pytest.raises(FhirError) as caught:
        admit(caller, cost=cost)
    return caught.value


def issue(error: FhirError) -> dict:
    return error.outcome()["issue"][0]


def without_wait(diagnostics: str) -> str:
    return re.sub(r"retry after \d+ s$", "", diagnostics)


def exhaust(caller, units: int) -> None:
    for _ in range(units):
        admit(caller).release()


def test_a_remembered_refusal_costs_no_redis_call_and_reads_like_redis(
    own_limiter, cast, new_caller
):
    caller = new_caller(cast.tenant_a, plan_make(read_per_minute=60))  # depth 10, 1/s
    exhaust(caller, 10)
    asked = evalsha_calls(own_limiter)
    from_redis = refusal(caller)
    assert evalsha_calls(own_limiter) == asked + 1
    remembered = [refusal(caller) for _ in range(20)]
    assert evalsha_calls(own_limiter) == asked + 1  # not one more call

    for error in remembered:
        assert error.status == from_redis.status == 429
        assert issue(error)["code"] == issue(from_redis)["code"] == "throttled"
        assert issue(error)["details"] == issue(from_redis)["details"]
        assert issue(error)["details"]["coding"][0]["code"] == ThrottleReason.ENDPOINT_RATE
        assert without_wait(issue(error)["diagnostics"]) == without_wait(
            issue(from_redis)["diagnostics"]
        )
        assert error.headers["RateLimit-Policy"] == from_redis.headers["RateLimit-Policy"]
        policies, redis_policies = (
            ratelimit_policies(error.headers),
            ratelimit_policies(from_redis.headers),
        )
        for name, values in policies.items():
            assert values["r"] == redis_policies[name]["r"]
            assert abs(values["t"] - redis_policies[name]["t"]) <= 1
        wait = policies["endpoint-read"]["t"]
        assert policies["endpoint-read"]["r"] == 0 and wait >= 1
        assert wait <= int(error.headers["Retry-After"]) <= wait + 2

    throttle_events_flush()  # every refusal is an event, remembered or not
    events = ThrottleEvent.objects.filter(client=caller.client, reason=ThrottleReason.ENDPOINT_RATE)
    assert events.aggregate(n=Sum("count"))["n"] == 21


def test_the_memo_steps_aside_as_soon_as_a_unit_may_pass(own_limiter, cast, new_caller, settings):
    settings.LIMITS_REFUSAL_MEMO_SECONDS = 5  # the bucket, not the lifetime, decides here
    caller = new_caller(cast.tenant_a, plan_make(read_per_minute=120))  # depth 20, 2/s
    exhaust(caller, 20)
    refusal(caller)
    asked = evalsha_calls(own_limiter)
    refusal(caller)
    assert evalsha_calls(own_limiter) == asked
    time.sleep(0.6)  # one unit is back: Redis decides, and admits
    admit(caller).release()
    assert evalsha_calls(own_limiter) == asked + 1
    # A request costing more than is back is still certain to be refused.
    refusal(caller)
    asked = evalsha_calls(own_limiter)
    time.sleep(0.6)
    assert reason_code(refusal(caller, cost=5)) == ThrottleReason.ENDPOINT_RATE
    assert evalsha_calls(own_limiter) == asked


def reason_code(error: FhirError) -> str:
    return issue(error)["details"]["coding"][0]["code"]


def test_the_memo_lives_at_most_its_lifetime(own_limiter, cast, new_caller, settings):
    settings.LIMITS_REFUSAL_MEMO_SECONDS = 0.3
    caller = new_caller(cast.tenant_a, plan_make(read_per_minute=6))  # one unit per 10 s
    exhaust(caller, 1)
    refusal(caller)
    asked = evalsha_calls(own_limiter)
    refusal(caller)
    assert evalsha_calls(own_limiter) == asked
    assert not refusal_memo.empty()
    time.sleep(0.35)
    assert refusal_memo.empty()  # lapsed: the process's requests skip the refusal checks
    refusal(caller)  # still refused, but Redis (and the pipeline) saw it again
    assert evalsha_calls(own_limiter) == asked + 1
    refusal(caller)
    assert evalsha_calls(own_limiter) == asked + 1

    settings.LIMITS_REFUSAL_MEMO_SECONDS = 0  # off: every refusal asks Redis
    time.sleep(0.35)
    refusal(caller)
    refusal(caller)
    assert evalsha_calls(own_limiter) == asked + 3


def test_a_raised_quota_applies_at_once(
    own_limiter, cast, new_caller, django_capture_on_commit_callbacks
):
    caller = new_caller(cast.tenant_a, plan_make(read_per_minute=6))
    exhaust(caller, 1)
    refusal(caller)
    refusal(caller)  # remembered
    with django_capture_on_commit_callbacks(execute=True):
        limit_override_save(
            override=LimitOverride(
                tenant=cast.tenant_a,
                client=caller.client,
                endpoint_class=READ,
                per_minute=6000,
                burst_seconds=20,  # deeper than the 10 s the old limit's TAT runs ahead
            )
        )
    admission = admit(caller)  # the memo's refusal belonged to the old limits
    assert ratelimit_policies(admission.headers)["endpoint-read"]["q"] == 6000
    admission.release()


def test_another_processs_config_change_drops_the_memo_once_seen(own_limiter, cast, new_caller):
    flooder, other = (
        new_caller(cast.tenant_a, plan_make(read_per_minute=6)),
        new_caller(cast.tenant_a),
    )
    exhaust(flooder, 1)
    refusal(flooder)
    # Another process raises the quota: its row, then its version bump in Redis.
    LimitOverride.objects.create(
        tenant=cast.tenant_a,
        client=flooder.client,
        endpoint_class=READ,
        per_minute=6000,
        burst_seconds=20,  # deeper than the 10 s the old limit's TAT runs ahead
    )
    own_limiter.incr(CONFIG_VERSION_KEY)
    refusal(flooder)  # this process has not heard yet: the memo still answers
    admit(other).release()  # any decision in Redis tells it the new version
    admit(flooder).release()


def test_a_daily_quota_is_remembered_until_its_reset(own_limiter, cast, new_caller):
    caller = new_caller(cast.tenant_a, plan_make(daily_quota=3))
    exhaust(caller, 3)
    from_redis = refusal(caller)
    asked = evalsha_calls(own_limiter)
    remembered = refusal(caller)
    assert evalsha_calls(own_limiter) == asked
    assert reason_code(remembered) == reason_code(from_redis) == ThrottleReason.DAILY_QUOTA
    daily, redis_daily = (ratelimit_policies(e.headers)["daily"] for e in (remembered, from_redis))
    assert (daily["q"], daily["w"], daily["r"]) == (redis_daily["q"], redis_daily["w"], 0)
    assert abs(daily["t"] - redis_daily["t"]) <= 1
    seconds_to_midnight = 86400 - int(time.time()) % 86400
    assert int(remembered.headers["Retry-After"]) >= seconds_to_midnight - 1


def test_slots_are_never_remembered(own_limiter, cast, new_caller):
    caller = new_caller(cast.tenant_a, plan_make(concurrency=1))
    held = admit(caller)
    for _ in range(3):
        asked = evalsha_calls(own_limiter)
        assert reason_code(refusal(caller)) == ThrottleReason.CONCURRENCY
        assert evalsha_calls(own_limiter) == asked + 1
    held.release()
    admit(caller).release()


def test_dry_run_limits_never_refuse_from_the_memo(own_limiter, cast, new_caller):
    caller = new_caller(cast.tenant_a, plan_make(read_per_minute=6, dry_run=True))
    admit(caller).release()  # the one unit of its burst
    asked = evalsha_calls(own_limiter)
    for _ in range(5):  # each past the limit: reported, decided by Redis, admitted
        admission = admit(caller)
        assert ratelimit_policies(admission.headers)["endpoint-read"]["r"] == 0
        admission.release()
    assert evalsha_calls(own_limiter) == asked + 5


def test_the_refusal_is_known_without_any_io(
    own_limiter, cast, new_caller, django_assert_num_queries
):
    caller = new_caller(cast.tenant_a, plan_make(read_per_minute=6))
    known = dict(caller=caller, endpoint_class=READ, resource_type="Patient")
    assert limit_refusal_known(**known) is None  # its limits are not cached here
    exhaust(caller, 1)
    assert limit_refusal_known(**known) is None  # nothing remembered
    from_redis = refusal(caller)
    asked = evalsha_calls(own_limiter)
    with django_assert_num_queries(0):
        refused = limit_refusal_known(**known)
    assert evalsha_calls(own_limiter) == asked
    assert refused is not None and refused.holds()
    error = refused.error
    assert error.status == 429
    assert issue(error)["details"] == issue(from_redis)["details"]
    assert error.headers["RateLimit-Policy"] == from_redis.headers["RateLimit-Policy"]
    throttle_events_flush()
    events = ThrottleEvent.objects.filter(client=caller.client)
    assert events.aggregate(n=Sum("count"))["n"] == 2  # Redis's refusal and this one
    # Another resource type has its own limit set, with the same endpoint bucket: known too.
    assert limit_refusal_known(**(known | {"resource_type": "Observation"})) is not None
