"""What each FHIR interaction costs PostgreSQL, counted on the wire so that it cannot creep
back: a read and a vread are one statement naming their schema; a transaction pays one
round trip for its schema (its BEGIN and SET LOCAL go in one message); a create is one
write statement; an update and the searches are pinned too. Every request adds one more:
its audit event, one INSERT naming the caller's schema (in the transaction when there is
one, so a write and its event commit together). Those are counted with the response cache
off for the types read (`uncached`); a cached read is pinned at its audit event alone, and
at one round trip to the cache's Redis beside the limiter's.

The counts are taken through the real pipeline (Django's test client) on a connection that
runs through a counting proxy (scripts/wire_count.py), outside any test transaction, so
BEGIN and COMMIT are on the wire like in production. Each request is sent once first with
the same token: the counts are a warm process's, whose token check needs no statement.
"""

import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.db import connection
from django.test import Client

from fhirplatform.cache.services import cache_rule_delete, cache_rule_set
from fhirplatform.fhir import services
from fhirplatform.schemas import tenant_schema
from scripts.wire_count import PostgresCounter, RedisCounter
from tests.fhir.rest_support import FHIR_JSON, generous_plans_committed, observation, patient

BEGIN_WITH_PATH = 'BEGIN; SET LOCAL search_path = "t_provider_a","public"'
AUDIT_EVENT = 'INSERT INTO "t_provider_a".audit_auditevent '


def _audited(texts: tuple[str, ...], at: int) -> bool:
    """The statement at `at` is the request's audit event, in the caller's trail."""
    return texts[at].startswith(AUDIT_EVENT)


@dataclass(frozen=True)
class Counted:
    statements: int
    round_trips: int
    texts: tuple[str, ...]

    @property
    def sent(self) -> list[str]:
        """The statements' texts with literal values cut, for readable failures."""
        return [text.split(" WHERE ")[0][:90] for text in self.texts]


@pytest.fixture
def wire(django_db_blocker: Any) -> Iterator[PostgresCounter]:
    """The test's database connection, run through a counting proxy."""
    with django_db_blocker.unblock(), PostgresCounter.for_url(os.environ["DATABASE_URL"]) as pg:
        saved = dict(connection.settings_dict)
        connection.close()
        options = {**saved["OPTIONS"], "sslmode": "disable"}
        connection.settings_dict.update(HOST="127.0.0.1", PORT=str(pg.port), OPTIONS=options)
        try:
            yield pg
        finally:
            connection.close()
            connection.settings_dict.clear()
            connection.settings_dict.update(saved)


@pytest.fixture
def api(cast: Any, committed: None, django_db_blocker: Any) -> Iterator[Client]:
    with generous_plans_committed(cast, django_db_blocker):
        token = cast.client_a.token()
        yield Client(HTTP_AUTHORIZATION=f"Bearer {token}", HTTP_ACCEPT=FHIR_JSON)


@pytest.fixture
def uncached(cast: Any, committed: None) -> Iterator[None]:
    """Tenant A's Patients and Observations never cached: every read runs its handler."""
    rules = [
        cache_rule_set(tenant=cast.tenant_a, resource_type=resource_type, ttl_seconds=0)
        for resource_type in ("Patient", "Observation")
    ]
    try:
        yield
    finally:
        for rule in rules:
            cache_rule_delete(rule=rule)


def _counted(wire: PostgresCounter, send: Callable[[], Any]) -> tuple[Any, Counted]:
    """What `send` costs the second time it is sent: the first warms the process, so the
    token check is answered from the token cache (tenants/token_cache.py)."""
    send()
    before = wire.snapshot()
    response = send()
    delta = wire.delta(before)
    counted = Counted(delta.statements, delta.round_trips, delta.texts)
    print(f"\n{counted.statements} statements, {counted.round_trips} round trips: {counted.sent}")
    return response, counted


def _created(api: Client, resource: dict[str, Any]) -> dict[str, Any]:
    response = api.post(
        f"/fhir/provider-a/{resource['resourceType']}",
        json.dumps(resource),
        content_type=FHIR_JSON,
    )
    assert response.status_code == 201, response.content
    body: dict[str, Any] = response.json()
    return body


def test_a_read_is_one_statement_naming_its_schema_and_its_audit_event(api, uncached, wire):
    stored = _created(api, patient("Readcount"))
    path = f"/fhir/provider-a/Patient/{stored['id']}"

    response, counted = _counted(wire, lambda: api.get(path))

    assert response.status_code == 200 and response.json() == stored
    assert (counted.statements, counted.round_trips) == (2, 2)
    assert counted.texts[0].startswith("SELECT version_id, last_updated, deleted")
    assert _audited(counted.texts, 1)
    assert '"t_provider_a"."fhir_resource"' in counted.texts[0]
    assert response["ETag"] == 'W/"1"'


def test_a_conditional_read_answered_304_is_one_statement_and_its_audit_event(api, uncached, wire):
    stored = _created(api, patient("Notmodified"))
    path = f"/fhir/provider-a/Patient/{stored['id']}"

    response, counted = _counted(wire, lambda: api.get(path, HTTP_IF_NONE_MATCH='W/"1"'))

    assert response.status_code == 304
    assert (counted.statements, counted.round_trips) == (2, 2) and _audited(counted.texts, 1)


def test_a_vread_is_one_statement_naming_its_schema_and_its_audit_event(api, uncached, wire):
    stored = _created(api, patient("Vreadcount"))
    path = f"/fhir/provider-a/Patient/{stored['id']}/_history/1"

    response, counted = _counted(wire, lambda: api.get(path))

    assert response.status_code == 200 and response.json() == stored
    assert (counted.statements, counted.round_trips) == (2, 2) and _audited(counted.texts, 1)
    assert '"t_provider_a"."fhir_resourceversion"' in counted.texts[0]


def test_the_other_tenants_resource_is_not_found_in_one_statement_and_audited_as_ours(
    api, uncached, wire, cast
):
    with tenant_schema(cast.tenant_b):
        theirs = services.resource_create(
            resource_type="Patient", content=patient("Theirs"), source="test"
        )
    path = f"/fhir/provider-a/Patient/{theirs.logical_id}"

    response, counted = _counted(wire, lambda: api.get(path))

    assert response.status_code == 404
    assert (counted.statements, counted.round_trips) == (2, 2)
    assert '"t_provider_a"."fhir_resource"' in counted.texts[0]
    assert _audited(counted.texts, 1)  # the caller's trail, never the URL tenant's


def _stored_text(tenant: Any, logical_id: str) -> str:
    with tenant_schema(tenant), connection.cursor() as cursor:
        cursor.execute(
            "SELECT content::text FROM fhir_resource WHERE logical_id = %s", [logical_id]
        )
        row = cursor.fetchone()
    assert row is not None
    return str(row[0])


def test_a_read_and_a_search_send_the_stored_json_as_postgresql_returns_it(api, cast):
    # jsonb keeps 1e-07 as the numeric 0.0000001; parsed and dumped again by Python it
    # would go out as 1e-07. The read's body and the searchset's entry are the stored text.
    stored = _created(api, observation("Patient/123", value=1e-07))
    text = _stored_text(cast.tenant_a, stored["id"])
    assert '"value": 0.0000001' in text

    read = api.get(f"/fhir/provider-a/Observation/{stored['id']}")
    search = api.get("/fhir/provider-a/Observation", {"_id": stored["id"]})

    assert read.content.decode() == text
    assert f'"resource":{text},' in search.content.decode()


def test_an_integer_past_64_bits_goes_out_exactly_as_the_client_sent_it(api, cast):
    digits = "123456789012345678901234567890"
    body = json.dumps(observation("Patient/123")).replace('"value": 72.0', f'"value": {digits}')
    created = api.post("/fhir/provider-a/Observation", body, content_type=FHIR_JSON)
    assert created.status_code == 201, created.content
    logical_id = created.json()["id"]

    read = api.get(f"/fhir/provider-a/Observation/{logical_id}")
    search = api.get(
        "/fhir/provider-a/Observation", {"_id": logical_id, "_elements": "valueQuantity"}
    )

    for response in (created, read, search):
        assert f'"value":{digits}' in response.content.decode().replace(" ", "")
    assert f'"value": {digits}' in _stored_text(cast.tenant_a, logical_id)


def test_a_create_is_one_write_statement_in_one_transaction(api, wire):
    resource = observation("Patient/123", value=72.5)

    response, counted = _counted(wire, lambda: _created(api, resource))

    assert response["valueQuantity"]["value"] == 72.5
    assert (counted.statements, counted.round_trips) == (5, 4)
    assert counted.texts[:2] == tuple(BEGIN_WITH_PATH.split("; "))
    assert counted.texts[2].startswith("WITH doc AS")
    assert _audited(counted.texts, 3) and counted.texts[4] == "COMMIT"


def test_an_update_locks_then_writes_in_one_statement(api, wire):
    stored = _created(api, patient("Updatecount"))
    path = f"/fhir/provider-a/Patient/{stored['id']}"

    def update() -> Any:
        response = api.put(path, json.dumps(stored), content_type=FHIR_JSON)
        assert response.status_code == 200, response.content
        return response

    response, counted = _counted(wire, update)

    assert response.json()["meta"]["versionId"] == "3"
    assert (counted.statements, counted.round_trips) == (6, 5)
    assert counted.texts[:2] == tuple(BEGIN_WITH_PATH.split("; "))
    assert counted.texts[2].startswith('SELECT "fhir_resource"."id"')
    assert counted.texts[3].startswith("WITH doc AS")
    assert _audited(counted.texts, 4) and counted.texts[5] == "COMMIT"


@pytest.mark.parametrize(
    ("resource_type", "params"),
    [
        ("Observation", {"code": "http://loinc.org|8867-4", "date": "ge2024-01-01"}),
        ("Patient", {"name": "Searchcount"}),
    ],
)
def test_a_search_is_one_select_in_one_transaction(api, uncached, wire, resource_type, params):
    run = uuid.uuid4().hex[:8]
    subject = _created(api, patient("Searchcount", id=run))
    _created(api, observation(f"Patient/{subject['id']}"))
    if resource_type == "Observation":
        params = params | {"patient": subject["id"]}

    def search() -> Any:
        return api.get(f"/fhir/provider-a/{resource_type}", params)

    response, counted = _counted(wire, search)

    assert response.status_code == 200 and response.json()["total"] >= 1
    assert (counted.statements, counted.round_trips) == (5, 4)
    assert counted.texts[:2] == tuple(BEGIN_WITH_PATH.split("; "))
    assert _audited(counted.texts, 3) and counted.texts[4] == "COMMIT"


@pytest.fixture
def limiter_wire(settings: Any) -> Iterator[RedisCounter]:
    """The limiter's Redis, through a counting proxy. A release waits for the next request
    (it rides on that request's admission) instead of the idle flush."""
    from fhirplatform.limits.engine import limits_reset_local_state

    with RedisCounter.for_url(settings.LIMITS_REDIS_URL) as proxy:
        reachable = settings.LIMITS_REDIS_URL
        settings.LIMITS_REDIS_URL = proxy.url_for(reachable)
        settings.LIMITS_RELEASE_DELAY_MS = 60_000
        limits_reset_local_state()
        try:
            yield proxy
        finally:
            settings.LIMITS_REDIS_URL = reachable
            limits_reset_local_state()


def test_a_history_page_is_its_count_and_its_rows_in_one_transaction(api, uncached, wire):
    subject = _created(api, patient("Historycount"))
    path = f"/fhir/provider-a/Patient/{subject['id']}/_history"

    response, counted = _counted(wire, lambda: api.get(path))

    assert response.status_code == 200 and response.json()["total"] == 1
    # BEGIN, SET LOCAL; the current row (its compartment); the total; the page; the audit
    # event; COMMIT.
    assert (counted.statements, counted.round_trips) == (7, 6), counted.sent
    assert _audited(counted.texts, 5)


def test_a_warm_read_is_its_statement_its_audit_event_and_one_redis_round_trip(
    api, uncached, wire, limiter_wire, cache_wire
):
    """The whole hot path, pinned: token (cache), scope, limits and slot (one EVALSHA that
    also carries the previous request's release), the cache lookup (one EVALSHA, which
    brings the consent snapshot's generations), the read (one statement), its audit event
    (one INSERT)."""
    stored = _created(api, patient("Hotpath"))
    path = f"/fhir/provider-a/Patient/{stored['id']}"
    assert api.get(path).status_code == 200  # the process warms up
    reads = 5
    sql, limiter, cache = wire.snapshot(), limiter_wire.snapshot(), cache_wire.snapshot()
    for _ in range(reads):
        response = api.get(path)
        assert response.status_code == 200 and response["X-Cache"] == "BYPASS"
    sql_delta, limiter_delta = wire.delta(sql), limiter_wire.delta(limiter)
    cache_delta = cache_wire.delta(cache)
    assert (sql_delta.statements, sql_delta.round_trips) == (2 * reads, 2 * reads)
    assert (limiter_delta.commands, limiter_delta.round_trips) == (reads, reads)
    assert dict(limiter_delta.by_name) == {"EVALSHA": reads}
    assert dict(cache_delta.by_name) == {"EVALSHA": reads}
    assert cache_delta.round_trips == reads


@pytest.fixture
def cache_wire(settings: Any) -> Iterator[RedisCounter]:
    """The response cache's Redis, through a counting proxy."""
    from fhirplatform.cache.store import store_reset_local_state

    with RedisCounter.for_url(settings.CACHE_REDIS_URL) as proxy:
        reachable = settings.CACHE_REDIS_URL
        settings.CACHE_REDIS_URL = proxy.url_for(reachable)
        store_reset_local_state()
        try:
            yield proxy
        finally:
            settings.CACHE_REDIS_URL = reachable
            store_reset_local_state()


def test_a_cached_read_is_its_audit_event_alone_and_one_cache_round_trip(api, wire, cache_wire):
    """A miss is the read's statement, its audit event, a lookup and a fill; a hit is the
    lookup and its audit event."""
    stored = _created(api, patient("Cachedread"))
    path = f"/fhir/provider-a/Patient/{stored['id']}"
    # A warm process: the consent snapshot and the cache rules are held in memory.
    assert api.get("/fhir/provider-a/Patient/warm-up").status_code == 404
    sql, cache = wire.snapshot(), cache_wire.snapshot()
    missed = api.get(path)
    sql_delta, cache_delta = wire.delta(sql), cache_wire.delta(cache)
    assert missed["X-Cache"] == "MISS"
    assert sql_delta.statements == 2 and dict(cache_delta.by_name) == {"EVALSHA": 2}

    sql, cache = wire.snapshot(), cache_wire.snapshot()
    hit = api.get(path)
    sql_delta, cache_delta = wire.delta(sql), cache_wire.delta(cache)
    assert hit["X-Cache"] == "HIT" and hit.content == missed.content
    assert hit["ETag"] == missed["ETag"] and hit["Last-Modified"] == missed["Last-Modified"]
    assert sql_delta.statements == 1  # its audit event alone
    assert (cache_delta.commands, cache_delta.round_trips) == (1, 1)
