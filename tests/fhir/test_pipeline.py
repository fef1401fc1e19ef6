"""The pipeline's one exit: answers, refusals and crashes all leave through pipeline_finish,
which frees the concurrency slot and the Idempotency-Key and sets the headers."""

import json
import uuid
from typing import Any, NamedTuple

import pytest
from django.test import Client

from fhirplatform.fhir import pipeline
from fhirplatform.limits import engine
from tenants.scopes import scopes_parse
from tenants.services import client_create, token_issue
from tests.fhir.pipeline_urls import GatedCreate
from tests.limits import conftest as limit_fixtures
from tests.limits.conftest import plan_make

pytestmark = pytest.mark.django_db

# Shared with the limit tests: the limiter's Redis, emptied for each test.
limiter_redis = limit_fixtures.limiter_redis

REQUEST_ID = "pipeline-test-0001"
MISSING = f"/fhir/provider-a/Patient/{uuid.uuid4()}"


class Exit(NamedTuple):
    status: int
    admitted: bool  # the request held an admission (rate limits and a slot) when it left


@pytest.fixture
def exits(monkeypatch: pytest.MonkeyPatch) -> list[Exit]:
    """Every response that left through the pipeline's exit."""
    seen: list[Exit] = []
    finish = pipeline.pipeline_finish

    def spy(*, state: pipeline.PipelineState, response: Any) -> Any:
        seen.append(Exit(response.status_code, state.admission is not None))
        return finish(state=state, response=response)

    monkeypatch.setattr(pipeline, "pipeline_finish", spy)
    return seen


@pytest.fixture
def gated(settings: Any) -> type[GatedCreate]:
    settings.ROOT_URLCONF = "tests.fhir.pipeline_urls"
    GatedCreate.gate.set()
    GatedCreate.calls.clear()
    return GatedCreate


def _token(tenant_slug: str, scopes: str = "system/*.cruds", **limits: int) -> str:
    issued = client_create(
        partner_name="Pipeline " + uuid.uuid4().hex[:8],
        tenant_slugs=[tenant_slug],
        scopes="system/*.cruds",
        plan_name=plan_make(**limits).name,
    )
    return token_issue(
        grant=issued.grants[0], scopes=scopes_parse(scopes), auth_method="test"
    ).access_token


def _get(path: str, token: str | None = None) -> Any:
    headers: dict[str, Any] = {"HTTP_X_REQUEST_ID": REQUEST_ID}
    if token:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return Client().get(path, **headers)


def _left_through_the_exit(
    response: Any, exits: list[Exit], status: int, *, admitted: bool
) -> dict[str, Any]:
    """The response has its status, went through the exit once, and carries the headers."""
    assert response.status_code == status, response.content[:300]
    assert exits == [Exit(status, admitted)]
    assert response["X-Request-ID"] == REQUEST_ID
    assert "RateLimit" in response.headers and "RateLimit-Policy" in response.headers
    assert response["Content-Type"].startswith("application/fhir+json")
    outcome: dict[str, Any] = json.loads(response.content)
    assert outcome["resourceType"] == "OperationOutcome"
    return outcome


def _nothing_in_flight(limiter_redis: Any) -> None:
    """Every concurrency slot taken has been given back (the release is queued to ride
    with the process's next admission: sent here first)."""
    assert engine.limit_releases_flush()
    assert not [key for key in limiter_redis.keys("fp:rl:*inflight*") if limiter_redis.zcard(key)]


@pytest.fixture
def released(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The status every admission was released with (what the adaptive limit was fed)."""
    seen: list[int] = []
    release = engine.limit_release

    def spy(*, admission: Any, status: int) -> None:
        seen.append(status)
        release(admission=admission, status=status)

    monkeypatch.setattr(engine, "limit_release", spy)
    return seen


def test_a_crash_in_the_handler_frees_the_slot_and_keeps_the_headers(
    cast, limiter_redis, gated, exits, released
):
    token, key = _token("provider-a"), str(uuid.uuid4())
    client = Client(raise_request_exception=False)
    for attempt in (1, 2):
        response = client.post(
            "/fhir/provider-a/Gated",
            data={"resourceType": "Patient", "crash": 1},
            content_type="application/fhir+json",
            HTTP_AUTHORIZATION=f"Bearer {token}",
            HTTP_IDEMPOTENCY_KEY=key,
            HTTP_X_REQUEST_ID=REQUEST_ID,
        )
        outcome = _left_through_the_exit(response, exits[-1:], 500, admitted=True)
        assert outcome["issue"][0]["code"] == "exception"
        assert len(exits) == attempt
    _nothing_in_flight(limiter_redis)
    assert limiter_redis.keys("fp:idem:*")  # kept: the retry replayed the first answer
    assert gated.calls == ["provider-a"]
    # The replayed 500 cost nothing: the adaptive limit is not told of a second error.
    assert released == [500, 200]


def test_django_http404_in_a_handler_leaves_through_the_exit(cast, limiter_redis, gated, exits):
    token = _token("provider-a")
    response = Client().post(
        "/fhir/provider-a/Gated",
        data={"resourceType": "Patient", "missing": 1},
        content_type="application/fhir+json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
        HTTP_X_REQUEST_ID=REQUEST_ID,
    )
    outcome = _left_through_the_exit(response, exits, 404, admitted=True)
    assert outcome["issue"][0]["code"] == "not-found"
    _nothing_in_flight(limiter_redis)


def test_401_leaves_through_the_exit_with_the_refusal_budget(limiter_redis, exits):
    response = _get(MISSING, token="not-a-token")
    _left_through_the_exit(response, exits, 401, admitted=False)
    assert response["RateLimit-Policy"].startswith('"refused-ip"')
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_403_for_a_missing_scope_leaves_through_the_exit(cast, limiter_redis, exits):
    response = _get(MISSING, token=_token("provider-a", scopes="system/Observation.rs"))
    outcome = _left_through_the_exit(response, exits, 403, admitted=False)
    assert response["RateLimit-Policy"].startswith('"refused-ip"')
    assert outcome["issue"][0]["diagnostics"] == (
        "Missing scope system/Patient.r for read on Patient"
    )


def test_404_for_another_tenants_token_leaves_through_the_exit(cast, limiter_redis, exits):
    response = _get(MISSING, token=_token("payer-b"))
    _left_through_the_exit(response, exits, 404, admitted=True)
    # Charged to the caller's own policies (never provider-a's), and its slot released.
    assert "provider-a" not in response["RateLimit-Policy"]
    assert response["RateLimit-Policy"] != '"refused-ip"'
    _nothing_in_flight(limiter_redis)


def test_429_leaves_through_the_exit_with_retry_after(cast, limiter_redis, exits):
    token = _token("provider-a", read_per_minute=6)  # a burst of one read
    assert _get(MISSING, token=token).status_code == 404
    exits.clear()
    throttled = _get(MISSING, token=token)
    outcome = _left_through_the_exit(throttled, exits, 429, admitted=False)
    assert outcome["issue"][0]["code"] == "throttled"
    assert int(throttled["Retry-After"]) >= 1
    _nothing_in_flight(limiter_redis)


def test_400_for_bad_input_leaves_through_the_exit(cast, limiter_redis, exits):
    response = Client().post(
        "/fhir/provider-a/Patient",
        data="{not json",
        content_type="application/fhir+json",
        HTTP_AUTHORIZATION=f"Bearer {_token('provider-a')}",
        HTTP_X_REQUEST_ID=REQUEST_ID,
    )
    outcome = _left_through_the_exit(response, exits, 400, admitted=True)
    assert "not valid JSON" in outcome["issue"][0]["diagnostics"]
    _nothing_in_flight(limiter_redis)


def test_a_request_refused_by_its_own_description_leaves_through_the_exit(
    cast, limiter_redis, exits
):
    # describe() refuses it before any bucket is touched: a too-costly _count.
    response = _get("/fhir/provider-a/Patient?_count=5000", token=_token("provider-a"))
    assert response.status_code == 400
    assert exits == [Exit(400, admitted=False)]
    assert response["X-Request-ID"] == REQUEST_ID
    assert json.loads(response.content)["issue"][0]["code"] == "too-costly"
    assert not limiter_redis.keys("fp:rl:provider-a:*")
