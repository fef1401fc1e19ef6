"""The entry store against the real Redis: keys, lookups, fills, generations, the payload
cap, stale-while-revalidate, and the round trips of a lookup and a fill."""

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fhirplatform.cache.generations import (
    CONSENT,
    EPOCH,
    POLICY,
    gen_patient,
    gen_type,
    generations_changed,
)
from fhirplatform.cache.keys import Namespace
from fhirplatform.cache.stats import cache_stats
from fhirplatform.cache.store import cache_fill
from scripts.wire_count import RedisCounter
from tests.cache.conftest import cache_reset, fill, key_for, lookup

PATIENT_DEPS = [POLICY, CONSENT, gen_patient("p1"), gen_type("Patient")]


def test_a_filled_entry_is_a_hit_with_its_payload_stored_at_and_age(schema):
    key = key_for(schema)
    first = lookup(schema, key, [POLICY, CONSENT])
    assert not first.hit and not first.bypass and not first.refreshing
    assert set(first.tokens) == {EPOCH, POLICY, CONSENT}
    body = b'{"resourceType":"Patient","meta":{"lastUpdated":"2024-01-01T00:00:00Z"}}'
    assert fill(schema, key, depends_on=PATIENT_DEPS, payload=body, epoch_seen=first.tokens[EPOCH])

    second = lookup(schema, key, [POLICY, CONSENT])
    assert second.hit and second.payload == body and not second.stale
    assert second.age == 0 and second.stored_at is not None
    assert abs(second.stored_at - time.time()) < 5
    assert second.tokens == first.tokens


def test_keys_name_tenant_client_scopes_purpose_and_request_and_hold_no_phi(schema):
    base = key_for(schema, request="GET /Patient?name=Smith")
    assert base.startswith(f"fp:c:{schema}:r:") and "Smith" not in base
    others = {
        key_for(schema, client="client-b", request="GET /Patient?name=Smith"),
        key_for(schema, scopes="system/Patient.rs", request="GET /Patient?name=Smith"),
        key_for(schema, purpose="HPAYMT", request="GET /Patient?name=Smith"),
        key_for(schema, purpose=None, request="GET /Patient?name=Smith"),
        key_for(schema, purpose="", request="GET /Patient?name=Smith"),
        key_for(schema, request="GET /Patient?name=Smyth"),
        key_for(schema, request="GET /Patient?name=Smith", namespace=Namespace.SEMANTIC),
        key_for("t_cache_other", request="GET /Patient?name=Smith"),
    }
    assert base not in others and len(others) == 8
    # The same scopes in another order are the same authority.
    assert key_for(schema, scopes="b/x.rs a/y.rs") == key_for(schema, scopes="a/y.rs  b/x.rs")


def test_an_entry_of_client_a_is_never_returned_for_another_caller(schema):
    request = "GET /Observation?patient=p1"
    key_a = key_for(schema, client="client-a", request=request)
    assert fill(schema, key_a, depends_on=PATIENT_DEPS)
    assert lookup(schema, key_a).hit
    for other in (
        key_for(schema, client="client-b", request=request),
        key_for(schema, client="client-a", purpose="HPAYMT", request=request),
        key_for(schema, client="client-a", scopes="system/Observation.rs", request=request),
    ):
        assert not lookup(schema, other).hit
    other_tenant = "t_cache_b_" + schema[-8:]
    assert not lookup(other_tenant, key_for(other_tenant, request=request)).hit


def test_a_key_of_another_tenant_is_refused(schema):
    key = key_for("t_cache_other")
    with pytest.raises(ValueError):
        lookup(schema, key)
    with pytest.raises(ValueError):
        cache_fill(
            key=key, tenant_schema=schema, epoch_seen="x", depends_on=[], payload=b"", ttl=5, swr=0
        )
    with pytest.raises(ValueError):
        lookup("t_x:r", key_for(schema))


@pytest.mark.parametrize(
    ("change", "affected"),
    [
        ({"patients": ["p1"]}, True),
        ({"patients": ["p2"]}, False),
        ({"resource_types": ["Patient"]}, True),
        ({"resource_types": ["Observation"]}, False),
        ({"consent": True}, True),
        ({"policy": True}, True),
        ({}, False),  # the epoch alone: entries never depend on it
    ],
)
def test_a_bump_makes_the_entries_under_it_unreachable_at_once(schema, direct, change, affected):
    key = key_for(schema)
    assert fill(schema, key, depends_on=PATIENT_DEPS)
    assert lookup(schema, key).hit
    generations_changed(tenant_schema=schema, **change)
    assert lookup(schema, key).hit is not affected
    # Unreachable is enough: the purge has nothing to do with it (and the lookup cleaned up).
    assert direct.exists(key) == (0 if affected else 1)


def test_a_fill_is_refused_when_the_tenant_changed_between_lookup_and_fill(schema):
    key = key_for(schema)
    seen = lookup(schema, key)
    # A write commits (anywhere in the tenant) while the answer is read from PostgreSQL.
    generations_changed(tenant_schema=schema, patients=["someone-else"])
    assert not fill(schema, key, depends_on=PATIENT_DEPS, epoch_seen=seen.tokens[EPOCH])
    assert not lookup(schema, key).hit
    assert cache_stats(tenant_schema=schema)["fills_skipped"] == 1
    # The next round stores again.
    assert fill(schema, key, depends_on=PATIENT_DEPS)
    assert lookup(schema, key).hit


def test_a_fill_is_refused_when_the_epoch_vanished(schema, direct):
    key = key_for(schema)
    seen = lookup(schema, key)
    direct.delete(f"fp:c:{schema}:g:epoch")  # Redis restarted empty, as far as this tenant goes
    assert not fill(schema, key, epoch_seen=seen.tokens[EPOCH])


def test_payloads_above_the_cap_are_not_cached(schema, settings):
    settings.CACHE_MAX_PAYLOAD_BYTES = 1024
    key = key_for(schema)
    assert not fill(schema, key, payload=b"x" * 1025)
    assert not lookup(schema, key).hit
    assert fill(schema, key, payload=b"x" * 1024)
    assert lookup(schema, key).payload == b"x" * 1024


def test_ttl_zero_is_never_cached(schema):
    key = key_for(schema)
    assert not fill(schema, key, ttl=0)
    assert not lookup(schema, key).hit


def test_binary_payloads_come_back_byte_for_byte(schema):
    key = key_for(schema)
    payload = bytes(range(256)) * 4
    assert fill(schema, key, payload=payload)
    assert lookup(schema, key).payload == payload


def _expire_ttl(seconds: float = 1.15) -> None:
    time.sleep(seconds)


def test_stale_while_revalidate_one_refresher_the_others_stale_hits(schema):
    key = key_for(schema, request="GET /Organization/o1")
    assert fill(schema, key, depends_on=[gen_type("Organization")], ttl=1, swr=60, payload=b"v1")
    _expire_ttl()

    results = []
    barrier = threading.Barrier(8)

    def look() -> None:
        barrier.wait()
        results.append(lookup(schema, key))

    threads = [threading.Thread(target=look) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    refreshers = [r for r in results if r.refreshing]
    stale = [r for r in results if r.hit]
    assert len(refreshers) == 1 and not refreshers[0].hit
    assert len(stale) == 7
    assert all(r.stale and r.payload == b"v1" and r.age >= 1 for r in stale)

    # The refresher fills: fresh again, and the lock is released.
    assert fill(schema, key, depends_on=[gen_type("Organization")], ttl=1, swr=60, payload=b"v2")
    fresh = lookup(schema, key)
    assert fresh.hit and not fresh.stale and fresh.payload == b"v2"


def test_a_generation_change_is_a_miss_even_within_the_stale_window(schema):
    key = key_for(schema, request="GET /Organization/o1")
    assert fill(schema, key, depends_on=[gen_type("Organization")], ttl=1, swr=60)
    _expire_ttl()
    generations_changed(tenant_schema=schema, resource_types=["Organization"])
    result = lookup(schema, key)
    assert not result.hit and not result.refreshing


def test_phi_is_never_served_stale(schema):
    key = key_for(schema)
    assert fill(schema, key, depends_on=PATIENT_DEPS, ttl=1, swr=0)
    assert lookup(schema, key).hit
    _expire_ttl()
    results = [lookup(schema, key) for _ in range(3)]
    assert not any(r.hit for r in results)
    assert not any(r.refreshing for r in results)  # no refresh lock: it is simply a miss


def test_hits_misses_and_fills_are_counted_per_tenant(schema):
    key = key_for(schema)
    lookup(schema, key)
    fill(schema, key)  # its lookup is a miss too
    lookup(schema, key)
    lookup(schema, key)
    generations_changed(tenant_schema=schema, policy=True)
    stats = cache_stats(tenant_schema=schema)
    assert stats["misses"] == 2 and stats["hits"] == 2 and stats["fills"] == 1
    assert stats["invalidations"] == 1 and stats["entries"] == 1
    assert stats["hit_ratio"] == 0.5
    assert cache_stats(tenant_schema="t_cache_nobody")["hit_ratio"] is None


@pytest.fixture
def counted(settings: Any) -> Iterator[RedisCounter]:
    """The cache's Redis through a counting proxy."""
    with RedisCounter.for_url(settings.REDIS_URL) as proxy:
        settings.CACHE_REDIS_URL = proxy.url_for(settings.REDIS_URL)
        cache_reset()
        yield proxy
    cache_reset()


def test_a_lookup_and_a_fill_are_one_round_trip_each(schema, counted):
    key = key_for(schema)
    fill(schema, key, depends_on=PATIENT_DEPS)  # connects and loads the scripts
    other = key_for(schema, request="GET /Patient/2")

    before = counted.snapshot()
    hit = lookup(schema, key, [POLICY, CONSENT])
    assert hit.hit
    hit_counts = counted.delta(before)

    before = counted.snapshot()
    miss = lookup(schema, other, [POLICY, CONSENT])
    miss_counts = counted.delta(before)

    before = counted.snapshot()
    assert cache_fill(
        key=other,
        tenant_schema=schema,
        epoch_seen=miss.tokens[EPOCH],
        depends_on=PATIENT_DEPS,
        payload=b"{}",
        ttl=30,
        swr=0,
    )
    fill_counts = counted.delta(before)

    for counts in (hit_counts, miss_counts, fill_counts):
        assert counts.round_trips == 1
        assert {name.upper(): n for name, n in counts.by_name.items()} == {"EVALSHA": 1}


def test_a_bump_is_one_round_trip(schema, counted):
    generations_changed(tenant_schema=schema)  # connects (and queues the purge)
    before = counted.snapshot()
    generations_changed(tenant_schema=schema, patients=["a", "b"], consent=True, policy=True)
    assert counted.delta(before).round_trips == 1


def test_a_redis_that_restarted_empty_hands_out_no_token_seen_before(schema, direct):
    key = key_for(schema)
    assert fill(schema, key, depends_on=PATIENT_DEPS)
    before = lookup(schema, key, [POLICY]).tokens
    for name in direct.scan_iter(f"fp:c:{schema}:*"):
        direct.delete(name)
    after = lookup(schema, key, [POLICY])
    assert not after.hit
    assert after.tokens[POLICY] != before[POLICY] and after.tokens[EPOCH] != before[EPOCH]
