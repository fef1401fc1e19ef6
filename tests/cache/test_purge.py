"""The purge deletes dead entries and keeps live ones; correctness never waits for it."""

import time

import pytest

from fhirplatform.cache.generations import gen_patient, generations_changed
from fhirplatform.cache.purge import cache_purge_dead
from fhirplatform.cache.stats import cache_stats
from tests.cache.conftest import fill, key_for, lookup


def _entries(schema: str, patients: list[str]) -> dict[str, str]:
    keys = {}
    for patient in patients:
        keys[patient] = key_for(schema, request=f"GET /Patient/{patient}")
        assert fill(schema, keys[patient], depends_on=[gen_patient(patient)])
    return keys


def test_the_purge_deletes_dead_entries_keeps_live_ones_and_can_run_twice(schema, direct):
    keys = _entries(schema, ["p1", "p2", "p3"])
    short = key_for(schema, request="GET /Patient/short")
    assert fill(schema, short, ttl=1)
    generations_changed(tenant_schema=schema, patients=["p1", "p2"])
    time.sleep(1.1)  # `short` expires: Redis drops it, its index member stays until the purge

    assert cache_purge_dead(tenant_schema=schema) == 3
    assert direct.exists(keys["p1"], keys["p2"], short) == 0
    assert lookup(schema, keys["p3"]).hit
    assert direct.zrange(f"fp:c:{schema}:idx", 0, -1) == [keys["p3"].encode()]
    assert cache_stats(tenant_schema=schema)["entries"] == 1
    assert direct.exists(f"fp:c:{schema}:purge") == 0  # the next bump queues a purge again

    assert cache_purge_dead(tenant_schema=schema) == 0
    assert lookup(schema, keys["p3"]).hit


def test_the_purge_walks_indexes_larger_than_a_batch(schema, direct, monkeypatch):
    monkeypatch.setattr("fhirplatform.cache.purge.BATCH", 7)
    keys = _entries(schema, [f"p{n}" for n in range(40)])
    generations_changed(tenant_schema=schema, patients=[f"p{n}" for n in range(0, 40, 2)])
    assert cache_purge_dead(tenant_schema=schema) == 20
    assert direct.zcard(f"fp:c:{schema}:idx") == 20
    assert all(lookup(schema, keys[f"p{n}"]).hit for n in range(1, 40, 2))


def test_without_a_purge_a_bumped_entry_is_unreachable_all_the_same(schema, direct):
    """No worker purges this tenant (none exists for it in PostgreSQL, so a worker refuses
    its purge): the bump alone makes the entry unreachable."""
    keys = _entries(schema, ["p1", "p2"])
    generations_changed(tenant_schema=schema, patients=["p1"])
    assert direct.exists(keys["p1"]) == 1  # still stored: nothing purged it
    assert direct.hexists(keys["p1"], "p")
    assert not lookup(schema, keys["p1"]).hit
    assert lookup(schema, keys["p2"]).hit


@pytest.mark.usefixtures("celery_worker_process")
def test_a_bump_queues_a_purge_that_the_worker_runs(cast, direct):
    schema = cast.tenant_a.schema_name
    suffix = str(time.monotonic_ns())
    dead, live = f"dead-{suffix}", f"live-{suffix}"
    keys = _entries(schema, [dead, live])
    # Stored and indexed, and no lookup touches the dead one: only the purge can delete it.
    generations_changed(tenant_schema=schema, patients=[dead])
    deadline = time.monotonic() + 30
    while direct.exists(keys[dead]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert direct.exists(keys[dead]) == 0, "the worker did not purge the dead entry"
    assert direct.zscore(f"fp:c:{schema}:idx", keys[dead]) is None
    assert direct.exists(keys[live]) == 1
    assert lookup(schema, keys[live]).hit
