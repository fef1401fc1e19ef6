"""Generation tokens: random, created when missing, replaced by a bump; and what happens
when Redis cannot be reached (bypass, no exception, the bump re-sent later)."""

import time
from typing import Any

from fhirplatform.cache import metrics
from fhirplatform.cache.generations import (
    CONSENT,
    EPOCH,
    POLICY,
    gen_patient,
    gen_type,
    generations_changed,
    generations_local_epoch,
    generations_read,
)
from fhirplatform.cache.link import link
from fhirplatform.cache.stats import cache_stats, cache_stats_denial
from fhirplatform.cache.store import cache_fill
from scripts.wire_count import RedisCounter
from tests.cache.conftest import cache_reset, fill, key_for, lookup

NAMES = [EPOCH, POLICY, CONSENT, gen_patient("p1"), gen_type("Observation")]


def test_tokens_are_created_when_missing_random_and_stable(schema, direct):
    assert direct.exists(f"fp:c:{schema}:g:epoch") == 0
    first = generations_read(tenant_schema=schema, names=NAMES)
    assert first is not None and set(first) == set(NAMES)
    assert len(set(first.values())) == len(NAMES)  # every key its own token
    assert all(len(token) >= 16 and not token.isdigit() for token in first.values())
    assert direct.ttl(f"fp:c:{schema}:g:p:p1") > 0  # idle tokens do not live for ever
    assert generations_read(tenant_schema=schema, names=NAMES) == first
    # Another tenant's tokens have nothing in common with these.
    other = generations_read(tenant_schema=schema + "_x", names=NAMES)
    assert other is not None and not set(other.values()) & set(first.values())


def test_a_bump_replaces_the_epoch_and_the_named_tokens_only(schema):
    before = generations_read(tenant_schema=schema, names=NAMES)
    generations_changed(tenant_schema=schema, patients=["p1"])
    after = generations_read(tenant_schema=schema, names=NAMES)
    assert before and after
    changed = {name for name in NAMES if before[name] != after[name]}
    assert changed == {EPOCH, gen_patient("p1")}
    generations_changed(
        tenant_schema=schema, resource_types=["Observation"], consent=True, policy=True
    )
    again = generations_read(tenant_schema=schema, names=NAMES)
    assert again
    assert {name for name in NAMES if after[name] != again[name]} == {
        EPOCH,
        POLICY,
        CONSENT,
        gen_type("Observation"),
    }


def test_a_token_deleted_in_redis_comes_back_as_a_new_one(schema, direct):
    before = generations_read(tenant_schema=schema, names=[POLICY])
    direct.delete(f"fp:c:{schema}:g:policy")
    after = generations_read(tenant_schema=schema, names=[POLICY])
    assert before and after and before[POLICY] != after[POLICY]


def _errors(operation: str) -> float:
    # From the counter itself: the registry would also run the per-tenant collector.
    samples = next(iter(metrics.redis_errors.collect())).samples
    return sum(
        s.value
        for s in samples
        if s.name.endswith("_total") and s.labels.get("operation") == operation
    )


def test_redis_down_every_call_bypasses_after_one_error_and_nothing_raises(schema, redis_down):
    key = key_for(schema)
    errors = _errors("lookup")
    started = time.monotonic()
    results = [lookup(schema, key, [POLICY]) for _ in range(5)]
    assert all(r.bypass and not r.hit and r.tokens == {} for r in results)
    assert time.monotonic() - started < 2
    # The breaker: one connection attempt, then bypass without trying for a while.
    assert _errors("lookup") - errors == 1
    assert not cache_fill(
        key=key, tenant_schema=schema, epoch_seen="e", depends_on=[], payload=b"", ttl=5, swr=0
    )
    assert generations_read(tenant_schema=schema, names=[POLICY]) is None
    assert cache_stats(tenant_schema=schema) == {}
    cache_stats_denial(tenant_schema=schema)  # does not raise

    epoch = generations_local_epoch()
    generations_changed(tenant_schema=schema, patients=["p1"], consent=True)  # does not raise
    assert generations_local_epoch() == epoch + 1


def test_bypasses_counted_while_down_reach_the_tenant_stats_with_the_next_lookup(
    schema, settings: Any
):
    reachable = settings.CACHE_REDIS_URL
    key = key_for(schema)
    settings.CACHE_REDIS_URL = "redis://127.0.0.1:1/0"
    for _ in range(3):
        assert lookup(schema, key).bypass
    settings.CACHE_REDIS_URL = reachable
    link.reset()  # the breaker would bypass for a while yet
    assert not lookup(schema, key).bypass
    assert cache_stats(tenant_schema=schema)["bypasses"] == 3


def test_a_bump_redis_missed_is_re_sent_once_redis_answers(schema, settings: Any):
    """Redis unreachable for the writer at commit time only (a partition): its entries are
    still there for the others, so the bump must get there later."""
    settings.CACHE_REDIS_RETRY_SECONDS = 1
    reachable = settings.REDIS_URL
    with RedisCounter.for_url(reachable) as proxy:
        settings.CACHE_REDIS_URL = proxy.url_for(reachable)
        key = key_for(schema)
        assert fill(schema, key, depends_on=[gen_patient("p1")])
        proxy.close()  # the writer's way to Redis is cut
        generations_changed(tenant_schema=schema, patients=["p1"])
    settings.CACHE_REDIS_URL = reachable  # and back
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        result = lookup(schema, key)
        if not result.bypass and not result.hit:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the bump was never delivered")
    assert cache_stats(tenant_schema=schema)["invalidations"] == 1
    cache_reset()
