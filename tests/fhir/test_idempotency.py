"""Idempotency-Key: replay, 409 while in flight, 422 for a different body, tenant scoping,
and the first outcome replayed whatever it was, a server error or a crash included."""

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from django.test import Client

from fhirplatform.limits.engine import limit_releases_flush
from tenants.scopes import scopes_parse
from tenants.services import client_create, token_issue
from tests.fhir.pipeline_urls import GatedCreate
from tests.limits import conftest as limit_fixtures
from tests.limits.live import bearer

# Shared with the limit tests: the limiter's Redis emptied per test, and a live gunicorn.
limiter_redis = limit_fixtures.limiter_redis
server = limit_fixtures.server

pytestmark = [pytest.mark.live]

JSON = {"Content-Type": "application/fhir+json"}


def new_token(tenant_slug: str) -> str:
    issued = client_create(
        partner_name="Idem " + uuid.uuid4().hex[:8],
        tenant_slugs=[tenant_slug],
        scopes="system/*.cruds",
    )
    return token_issue(
        grant=issued.grants[0], scopes=scopes_parse("system/*.cruds"), auth_method="test"
    ).access_token


def post_patient(base: str, tenant: str, token: str, key: str, family: str) -> requests.Response:
    return requests.post(
        f"{base}/fhir/{tenant}/Patient",
        json={"resourceType": "Patient", "name": [{"family": family}]},
        headers=bearer(token) | JSON | {"Idempotency-Key": f'"{key}"'},
        timeout=10,
    )


def test_a_replay_returns_the_original_response(server, committed, cast, limiter_redis):
    token, key = new_token("provider-a"), str(uuid.uuid4())
    first = post_patient(server, "provider-a", token, key, "Once")
    again = post_patient(server, "provider-a", token, key, "Once")
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers.get("Idempotent-Replayed") == "?1"
    assert "Idempotent-Replayed" not in first.headers
    assert "RateLimit" in again.headers
    # The replay created nothing: the one resource is still at version 1.
    read = requests.get(
        f"{server}/fhir/provider-a/Patient/{first.json()['id']}", headers=bearer(token), timeout=10
    )
    assert read.json()["meta"]["versionId"] == "1"


def test_the_same_key_with_a_different_body_is_422(server, committed, cast, limiter_redis):
    token, key = new_token("provider-a"), str(uuid.uuid4())
    assert post_patient(server, "provider-a", token, key, "First").status_code == 201
    reused = post_patient(server, "provider-a", token, key, "Second")
    assert reused.status_code == 422
    assert reused.json()["resourceType"] == "OperationOutcome"
    assert "different request" in reused.json()["issue"][0]["diagnostics"]


def test_keys_are_scoped_to_tenant_and_client(server, committed, cast, limiter_redis):
    key = str(uuid.uuid4())
    token_a, other_client_a, token_b = (
        new_token("provider-a"),
        new_token("provider-a"),
        new_token("payer-b"),
    )
    created_a = post_patient(server, "provider-a", token_a, key, "Same")
    # The other tenant cannot see, replay or collide with tenant A's key.
    created_b = post_patient(server, "payer-b", token_b, key, "Same")
    other = post_patient(server, "provider-a", other_client_a, key, "Same")
    assert created_a.status_code == created_b.status_code == other.status_code == 201
    assert "Idempotent-Replayed" not in created_b.headers
    assert "Idempotent-Replayed" not in other.headers
    assert len({created_a.json()["id"], created_b.json()["id"], other.json()["id"]}) == 3


def test_a_malformed_key_is_refused(server, committed, cast, limiter_redis):
    token = new_token("provider-a")
    response = requests.post(
        f"{server}/fhir/provider-a/Patient",
        json={"resourceType": "Patient"},
        headers=bearer(token) | JSON | {"Idempotency-Key": "x" * 300},
        timeout=10,
    )
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["issue"][0]["diagnostics"]


def test_a_duplicate_while_the_first_is_in_flight_is_409(committed, cast, limiter_redis, settings):
    settings.ROOT_URLCONF = "tests.fhir.pipeline_urls"
    token, key = new_token("provider-a"), str(uuid.uuid4())
    GatedCreate.gate.clear()
    GatedCreate.entered.clear()
    GatedCreate.calls.clear()

    def post(body: dict) -> tuple[int, dict, dict]:
        response = Client().post(
            "/fhir/provider-a/Gated",
            data=body,
            content_type="application/fhir+json",
            HTTP_AUTHORIZATION=f"Bearer {token}",
            HTTP_IDEMPOTENCY_KEY=key,
        )
        return response.status_code, dict(response.headers), response.json()

    body = {"resourceType": "Patient"}
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, body)
        assert GatedCreate.entered.wait(timeout=20)
        status, headers, outcome = post(body)
        assert status == 409
        assert outcome["issue"][0]["code"] == "conflict"
        assert int(headers["Retry-After"]) >= 1
        GatedCreate.gate.set()
        first_status, _, first_body = first.result(timeout=20)
    assert first_status == 201
    status, headers, replayed = post(body)
    assert (status, replayed) == (201, first_body)
    assert headers["Idempotent-Replayed"] == "?1"
    assert GatedCreate.calls == ["provider-a"]  # the handler ran once


def _post_gated(client: Client, body: dict[str, Any], key: str, token: str) -> Any:
    return client.post(
        "/fhir/provider-a/Gated",
        data=body,
        content_type="application/fhir+json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
        HTTP_IDEMPOTENCY_KEY=key,
    )


def test_a_server_error_is_replayed_not_run_again(committed, cast, limiter_redis, settings):
    # A 5xx may come after writes were made: running the request again could write twice.
    settings.ROOT_URLCONF = "tests.fhir.pipeline_urls"
    token, key = new_token("provider-a"), str(uuid.uuid4())
    GatedCreate.gate.set()
    GatedCreate.calls.clear()
    body = {"resourceType": "Patient", "fail": 1}
    failed = _post_gated(Client(), body, key, token)
    assert failed.status_code == 500
    for _ in range(2):
        retried = _post_gated(Client(), body, key, token)
        assert retried.status_code == 500
        assert retried.json() == failed.json()
        assert retried.headers["Idempotent-Replayed"] == "?1"
    assert len(GatedCreate.calls) == 1


def test_an_unhandled_error_is_replayed_and_frees_the_slot(
    committed, cast, limiter_redis, settings
):
    settings.ROOT_URLCONF = "tests.fhir.pipeline_urls"
    token, key = new_token("provider-a"), str(uuid.uuid4())
    GatedCreate.gate.set()
    GatedCreate.calls.clear()
    client = Client(raise_request_exception=False)
    body = {"resourceType": "Patient", "crash": 1}
    for _ in range(2):
        response = _post_gated(client, body, key, token)
        assert response.status_code == 500
        assert response.json()["issue"][0]["code"] == "exception"
    assert len(GatedCreate.calls) == 1
    assert limit_releases_flush()  # the releases ride with the next admission: sent now
    assert limiter_redis.zcard("fp:rl:provider-a:inflight") == 0
    assert limiter_redis.zcard("fp:rl:global:inflight") == 0


def test_a_client_error_is_replayed(server, committed, cast, limiter_redis):
    token, key = new_token("provider-a"), str(uuid.uuid4())
    invalid = {"resourceType": "Patient", "gender": "not-a-gender"}
    headers = bearer(token) | JSON | {"Idempotency-Key": key}
    url = f"{server}/fhir/provider-a/Patient"
    first = requests.post(url, json=invalid, headers=headers, timeout=10)
    again = requests.post(url, json=invalid, headers=headers, timeout=10)
    assert first.status_code == again.status_code == 422
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "?1"


@pytest.mark.django_db
def test_a_read_ignores_the_key(cast, limiter_redis):
    # (Also the db-marked item that makes pytest-django create the test database when
    # this module runs alone.)
    response = Client().get(
        "/fhir/provider-a/Patient/not-there",
        HTTP_AUTHORIZATION=f"Bearer {cast.client_a.token()}",
        HTTP_IDEMPOTENCY_KEY="read-key",
    )
    assert response.status_code == 404
    assert "RateLimit" in response.headers
    assert not limiter_redis.keys("fp:idem:*")
