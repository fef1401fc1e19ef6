"""The semantic tier through the FHIR API: a search's total, its pages' rows and its
includes are found once and shared by every variant of the search (page size aside):
`_summary`, `_elements`, `_total`, `_include` spelled anew; never across callers, and
never past a write, a Consent or a policy change."""

import time
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from fhirplatform.cache.link import cache_redis
from fhirplatform.cache.services import cache_rule_delete, cache_rule_set
from fhirplatform.cache.stats import cache_stats
from tests.consent.enforcement_support import (
    DENY_ALL,
    ConsentWorld,
    consent,
    observation,
)


@pytest.fixture
def patient_id(world: ConsentWorld, committed: None) -> str:
    """A patient of its own with three Observations, under the baseline policy."""
    world.policy()
    patient = world.created({"resourceType": "Patient", "name": [{"family": "Semantic"}]})
    for _ in range(3):
        world.created(observation(patient["id"]))
    return str(patient["id"])


def _search(client: Any, **params: Any) -> tuple[Any, list[str]]:
    """The answer, and the SQL it ran."""
    with CaptureQueriesContext(connection) as queries:
        response = client.get("Observation", **params)
    assert response.status_code == 200, response.content
    return response, [query["sql"] for query in queries.captured_queries]


def _searched(sql: list[str]) -> bool:
    """Whether the search's criteria ran (an EXISTS on the index tables)."""
    return any("fhir_search_" in text and "EXISTS" in text for text in sql)


def _counted(sql: list[str]) -> bool:
    return any("COUNT(*)" in text for text in sql)


def _ids(response: Any, mode: str = "match") -> list[str]:
    entries = response.json().get("entry", [])
    return [e["resource"]["id"] for e in entries if e["search"]["mode"] == mode]


def _semantic(world: ConsentWorld) -> tuple[int, int]:
    stats = cache_stats(tenant_schema=world.tenant.schema_name)
    return int(stats["semantic_hits"] or 0), int(stats["semantic_misses"] or 0)


def test_every_spelling_of_a_count_reads_one_total(world, patient_id):
    reader = world.client(world.reader)
    first, sql = _search(reader, patient=patient_id, _summary="count")
    assert first.json()["total"] == 3 and _counted(sql)

    for variant in ({"_count": "0"}, {"_total": "accurate", "_count": "1"}):
        again, sql = _search(reader, patient=patient_id, **variant)
        assert again["X-Cache"] == "MISS"  # another answer: the response tier misses
        assert again.json()["total"] == 3
        assert not _counted(sql), sql


def test_a_page_shown_otherwise_reads_its_rows_by_id_without_searching(world, patient_id):
    reader = world.client(world.reader)
    full, sql = _search(reader, patient=patient_id, _count="2")
    assert _searched(sql)
    hits, _ = _semantic(world)

    shaped, sql = _search(reader, patient=patient_id, _count="2", _elements="status")
    assert shaped["X-Cache"] == "MISS"
    assert _ids(shaped) == _ids(full)
    assert not _searched(sql), sql
    selects = [text for text in sql if text.startswith("SELECT")]
    assert len(selects) == 1 and "IN (" in selects[0]  # the page's rows, by id
    assert _semantic(world)[0] == hits + 1
    assert [e["resource"].get("valueQuantity") for e in shaped.json()["entry"]] == [None] * 2

    # Page two: its own entry, found again from either spelling's link.
    def next_page(answer: Any) -> tuple[Any, list[str]]:
        link = next(x["url"] for x in answer.json()["link"] if x["relation"] == "next")
        with CaptureQueriesContext(connection) as queries:
            response = reader.client.get(link, **reader._headers(None))
        assert response.status_code == 200, response.content
        return response, [query["sql"] for query in queries.captured_queries]

    second, sql = next_page(full)
    assert _searched(sql) and len(_ids(second)) == 1
    second_shaped, sql = next_page(shaped)
    assert _ids(second_shaped) == _ids(second) and not _searched(sql)


def test_an_include_is_resolved_once_for_every_spelling(world, patient_id):
    reader = world.client(world.reader)
    first, _ = _search(reader, patient=patient_id, _include="Observation:subject")
    assert _ids(first, "include") == [patient_id]

    again, sql = _search(
        reader, patient=patient_id, _include="Observation:subject", _summary="data"
    )
    assert _ids(again, "include") == [patient_id]
    assert not _searched(sql)
    assert not any("fhir_search_reference" in text for text in sql), sql


def test_another_caller_never_reads_the_entries(world, patient_id):
    reader = world.client(world.reader)
    _search(reader, patient=patient_id, _summary="count")
    hits, misses = _semantic(world)

    for other in (
        world.client(world.other),
        world.client(world.reader, purpose="HPAYMT"),
        world.client(world.reader, scopes="system/Observation.rs"),
    ):
        answer, sql = _search(other, patient=patient_id, _count="0")
        assert answer.json()["total"] == 3 and _counted(sql)
    assert _semantic(world) == (hits, misses + 3)


def test_a_write_a_policy_edit_and_a_consent_each_make_the_entries_unreachable(world, patient_id):
    reader = world.client(world.reader)

    def total(**params: Any) -> int:
        answer, _ = _search(reader, patient=patient_id, **params)
        return int(answer.json()["total"])

    assert total(_summary="count") == 3 == total(_count="0")
    world.created(observation(patient_id))
    assert total(_summary="count") == 4 == total(_count="0")
    world.policy(explicit_types=["Observation"])
    assert total(_summary="count") == 0 == total(_count="0")
    world.policy()
    assert total(_summary="count") == 4 == total(_count="0")
    world.created(consent(patient_id, DENY_ALL))
    assert total(_summary="count") == 0 == total(_total="accurate")


def test_an_answer_built_from_semantic_entries_is_cached_no_longer_than_they_live(
    world, patient_id
):
    schema = world.tenant.schema_name
    rule = cache_rule_set(tenant=world.tenant, resource_type="Observation", ttl_seconds=4)
    try:
        reader = world.client(world.reader)
        _search(reader, patient=patient_id)  # fills the page entry, ttl 4
        time.sleep(1.5)
        variant, sql = _search(reader, patient=patient_id, _elements="status")
        assert variant["X-Cache"] == "MISS" and not _searched(sql)

        redis = cache_redis()

        def stored(key: bytes) -> tuple[float, int]:
            at, ttl = redis.hmget(key, "at", "ttl")
            assert at is not None and ttl is not None
            return float(at), int(ttl)

        keys = redis.scan_iter(f"fp:c:{schema}:r:*")
        _, newest_ttl = max(stored(key) for key in keys if not key.endswith(b":swr"))
        assert newest_ttl <= 2  # what was left of the page entry, not the rule's 4
    finally:
        cache_rule_delete(rule=rule)
