"""The refusal gate (fhirplatform/fhir/gate.py): a flood past a rate limit is answered
before Django, with no database or Redis call, and the answer is the pipeline's."""

import time

import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_started
from django.db.models import Sum

from audit.deferred import UNRECORDED, audit_deferred_flush
from audit.digests import event_digest
from audit.models import AuditEvent
from fhirplatform.fhir import gate
from fhirplatform.fhir.gate import RefusalGate
from fhirplatform.limits.codes import ThrottleReason
from fhirplatform.limits.models import ThrottleEvent
from fhirplatform.limits.services import throttle_events_flush
from fhirplatform.schemas import tenant_schema
from tenants.models import AccessToken, Grant
from tenants.scopes import scopes_parse
from tenants.services import client_create, credential_hash, token_issue
from tests.limits.conftest import evalsha_calls, plan_make
from tests.wsgi_client import wsgi_get

pytestmark = pytest.mark.django_db

# Headers that differ between any two responses.
_PER_RESPONSE = {"X-Request-ID", "Date", "RateLimit", "Retry-After"}


def _grant(tenant_slug: str, scopes: str = "system/*.cruds", **limits: int) -> Grant:
    return client_create(
        partner_name="Gate",
        tenant_slugs=[tenant_slug],
        scopes=scopes,
        plan_name=plan_make(**limits).name,
    ).grants[0]


def _bearer(grant: Grant, scopes: str = "system/*.cruds") -> dict[str, str]:
    token = token_issue(grant=grant, scopes=scopes_parse(scopes), auth_method="test")
    return {"Authorization": f"Bearer {token.access_token}"}


def _token_hash(headers: dict[str, str]) -> str:
    return credential_hash(headers["Authorization"].removeprefix("Bearer "))


def _until_refused(url: str, headers: dict[str, str]):
    for _ in range(20):
        response = wsgi_get(url, headers)
        if response.status_code == 429:
            return response
        assert response.status_code == 404
    raise AssertionError("never refused")


def _gated(url: str, headers: dict[str, str], own_limiter, count: int = 3) -> list:
    """Requests answered with no Redis call and no Django request (the gate's)."""
    before = evalsha_calls(own_limiter)
    django_requests: list[object] = []

    def django_request(**signal: object) -> None:
        django_requests.append(signal)

    request_started.connect(django_request, weak=False)
    try:
        responses = [wsgi_get(url, headers) for _ in range(count)]
    finally:
        request_started.disconnect(django_request)
    assert evalsha_calls(own_limiter) == before  # no Redis call
    assert django_requests == []  # nor a Django request
    return responses


def test_a_flood_is_refused_by_the_gate_as_the_pipeline_refuses_it(
    cast, own_limiter, settings, django_assert_num_queries
):
    url = "/fhir/provider-a/Patient/no-such-patient"
    # The memo off: every refusal comes from Redis, through the whole pipeline.
    settings.LIMITS_REFUSAL_MEMO_SECONDS = 0
    piped = _until_refused(url, _bearer(_grant("provider-a", read_per_minute=60)))
    settings.LIMITS_REFUSAL_MEMO_SECONDS = 1
    headers = _bearer(_grant("provider-a", read_per_minute=60))
    first = _until_refused(url, headers)  # Redis refuses, the memo learns it
    with django_assert_num_queries(0):
        gated = _gated(url, headers, own_limiter, count=5)
    # One answer, worked out once and sent again, yet every refusal is counted.
    throttle_events_flush()
    token = AccessToken.objects.get(token_hash=_token_hash(headers))
    events = ThrottleEvent.objects.filter(client=token.client)
    assert events.aggregate(n=Sum("count"))["n"] == 1 + len(gated)
    assert len({r.headers["X-Request-ID"] for r in gated}) == len(gated)
    for response in [first, *gated]:
        assert response.status_code == 429
        assert set(response.headers) - _PER_RESPONSE == set(piped.headers) - _PER_RESPONSE
        for name in set(piped.headers) - _PER_RESPONSE - {"Content-Length"}:
            assert response.headers[name] == piped.headers[name], name
        issue = response.json()["issue"][0]
        assert issue["code"] == "throttled"
        assert issue["details"]["coding"][0]["code"] == ThrottleReason.ENDPOINT_RATE
        assert 1 <= int(response.headers["Retry-After"]) <= 2
    assert piped.json()["issue"][0]["details"] == gated[0].json()["issue"][0]["details"]


def test_each_request_the_gate_refuses_has_its_audit_event(cast, own_limiter, settings):
    """Written just after the 429 (audit/deferred.py), one per request, in the caller's
    trail, with what the pipeline's refusal event holds."""
    settings.LIMITS_REFUSAL_MEMO_SECONDS = 5
    headers = _bearer(_grant("provider-a", read_per_minute=60))
    url = "/fhir/provider-a/Patient/no-such-patient?_elements=id"
    _until_refused(url, headers)
    audit_deferred_flush()  # nothing of the pipeline's refusals is queued
    gated = _gated(url, headers, own_limiter, count=3)
    assert audit_deferred_flush() == 3
    client_id = AccessToken.objects.get(token_hash=_token_hash(headers)).client.client_id
    request_ids = [response.headers["X-Request-ID"] for response in gated]
    with tenant_schema(cast.tenant_a):  # every field as the pipeline's refusal holds it
        events = list(AuditEvent.objects.filter(request_id__in=request_ids))
        rows = list(AuditEvent.objects.filter(request_id__in=request_ids).values())
    assert all(event_digest(row) == row["digest"] for row in rows)
    assert sorted(event.request_id for event in events) == sorted(request_ids)
    for event in events:
        assert (event.status, event.outcome) == (429, f"throttled/{ThrottleReason.ENDPOINT_RATE}")
        assert (event.interaction, event.resource_type, event.resource_id) == (
            "read",
            "Patient",
            "no-such-patient",
        )
        assert (event.tenant, event.client_id, event.query) == ("provider-a", client_id, url)

    # Past the queue's bound, refusals are counted, and the count is recorded.
    settings.AUDIT_DEFERRED_MAX_EVENTS = 1
    _gated(url, headers, own_limiter, count=3)
    assert audit_deferred_flush() == 2
    with tenant_schema(cast.tenant_a):
        counted = AuditEvent.objects.get(outcome=UNRECORDED)
    assert counted.tenant == "provider-a" and counted.query.startswith("2 requests refused")


def test_the_gate_answers_only_what_it_knows(cast, own_limiter, settings):
    """Another endpoint class, another tenant's URL, a missing scope, an unknown token:
    the pipeline answers those, as it would without the gate."""
    settings.LIMITS_REFUSAL_MEMO_SECONDS = 5
    grant = _grant("provider-a", read_per_minute=60)
    headers = _bearer(grant)
    refused = "/fhir/provider-a/Patient/no-such-patient"
    _until_refused(refused, headers)
    assert wsgi_get(refused, headers).status_code == 429
    assert wsgi_get("/fhir/provider-a/Patient", headers).status_code == 200  # a search
    # Another tenant's URL is charged to the caller's own quota, then answered 404.
    assert wsgi_get("/fhir/payer-b/Patient/no-such-patient", headers).status_code == 429
    narrow = _bearer(grant, "system/Observation.rs")
    assert wsgi_get("/fhir/provider-a/Patient/x", narrow).status_code == 403
    unknown = {"Authorization": "Bearer not-a-token"}
    assert wsgi_get("/fhir/provider-a/Patient/x", unknown).status_code == 401


def test_the_gate_steps_aside_where_the_security_chain_depends_on_the_request(
    cast, own_limiter, settings
):
    """With an HTTPS redirect configured, Django's SecurityMiddleware answers a plain-HTTP
    request first; the gate does not answer it for Django."""
    settings.LIMITS_REFUSAL_MEMO_SECONDS = 5
    headers = _bearer(_grant("provider-a", read_per_minute=60))
    url = "/fhir/provider-a/Patient/no-such-patient"
    _until_refused(url, headers)
    settings.SECURE_SSL_REDIRECT = True
    # A handler built now: Django's middleware reads its settings when it is loaded.
    app = RefusalGate(WSGIHandler())
    assert wsgi_get(url, headers, app).status_code == 301


def test_a_refusal_is_not_answered_again_once_it_lapses(cast, own_limiter, settings, monkeypatch):
    """The gate sends a refusal's answer again only while the refusal certainly holds:
    once the bucket has room, the request goes through, however long answers are kept."""
    settings.LIMITS_REFUSAL_MEMO_SECONDS = 30
    monkeypatch.setattr(gate, "ANSWER_REUSE_SECONDS", 30.0)
    headers = _bearer(_grant("provider-a", read_per_minute=60))
    url = "/fhir/provider-a/Patient/no-such-patient"
    refused = _until_refused(url, headers)
    assert wsgi_get(url, headers).status_code == 429  # answered by the gate
    time.sleep(int(refused.headers["Retry-After"]) + 0.1)
    assert wsgi_get(url, headers).status_code == 404  # admitted, then not found


def test_a_search_flood_is_refused_at_the_search_price(cast, own_limiter, settings):
    """A search costs 2 units: with 1 left of the day's quota it is refused, and the gate
    refuses the flood that follows at that price, not at a read's, which would still fit."""
    settings.LIMITS_REFUSAL_MEMO_SECONDS = 5
    headers = _bearer(_grant("provider-a", daily_quota=3))
    search = "/fhir/provider-a/Patient"
    assert wsgi_get(search, headers).status_code == 200  # 2 of the 3 units
    assert wsgi_get(search, headers).status_code == 429  # Redis refuses, the memo learns
    for response in _gated(search, headers, own_limiter):
        assert response.status_code == 429
        issue = response.json()["issue"][0]
        assert issue["details"]["coding"][0]["code"] == ThrottleReason.DAILY_QUOTA
    assert wsgi_get("/fhir/provider-a/Patient/no-such-patient", headers).status_code == 404


def test_a_refusal_of_a_larger_page_is_not_sent_to_a_smaller_one(cast, own_limiter, settings):
    """A 150-result page costs 3 units and a default one 2: with 2 left, the first is
    refused, the second is served, whichever the gate answered last."""
    settings.LIMITS_REFUSAL_MEMO_SECONDS = 5
    headers = _bearer(_grant("provider-a", daily_quota=4))
    search = "/fhir/provider-a/Patient"
    assert wsgi_get(search, headers).status_code == 200  # 2 of the 4 units
    assert wsgi_get(search + "?_count=150", headers).status_code == 429  # Redis
    assert [r.status_code for r in _gated(search + "?_count=150", headers, own_limiter)] == [
        429
    ] * 3
    assert wsgi_get(search, headers).status_code == 200
    assert wsgi_get(search + "?_count=x", headers).status_code == 400  # the pipeline's answer
