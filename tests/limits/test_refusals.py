"""Refused requests: a per-address budget, RateLimit headers on every refusal, and a
tenant-mismatch 404 that carries the same headers as any other 404."""

import random
import uuid
from typing import Any

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db

MISSING = f"/fhir/provider-a/Patient/{uuid.uuid4()}"


def _fresh_address() -> str:
    # IPv6 addresses are counted per /64, so each one gets its own random /64.
    return f"2001:db8:{random.getrandbits(16):x}:{random.getrandbits(16):x}::1"


@pytest.fixture
def address() -> str:
    """A fresh client address, so each test starts with an untouched budget."""
    return _fresh_address()


def _get(path: str, address: str, token: str | None = None) -> Any:
    headers: dict[str, Any] = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    return Client().get(path, REMOTE_ADDR=address, **headers)


def test_a_refused_request_carries_the_refusal_budget(settings, address):
    settings.LIMITS_REFUSALS_PER_IP = "3/m"
    response = _get(MISSING, address, token="not-a-token")
    assert response.status_code == 401
    assert response["RateLimit-Policy"] == '"refused-ip";q=3;w=60'
    assert response["RateLimit"].startswith('"refused-ip";r=2;t=')


def test_past_the_budget_refusals_become_429_auth_refusals(settings, address):
    settings.LIMITS_REFUSALS_PER_IP = "3/m"
    statuses = [_get(MISSING, address).status_code for _ in range(3)]
    assert statuses == [401, 401, 401]
    throttled = _get(MISSING, address, token="still-wrong")
    assert throttled.status_code == 429
    assert int(throttled["Retry-After"]) >= 1
    issue = throttled.json()["issue"][0]
    assert issue["code"] == "throttled"
    assert issue["details"]["coding"][0]["code"] == "auth-refusals"


def test_the_budget_is_per_address(settings, address):
    settings.LIMITS_REFUSALS_PER_IP = "1/m"
    assert _get(MISSING, address).status_code == 401
    assert _get(MISSING, address).status_code == 429
    assert _get(MISSING, _fresh_address()).status_code == 401


def test_a_scope_refusal_counts_against_the_budget_not_the_tenant(cast, settings, address):
    settings.LIMITS_REFUSALS_PER_IP = "5/m"
    token = cast.client_a.token("system/Observation.rs")
    response = _get(MISSING, address, token=token)
    assert response.status_code == 403
    assert response["RateLimit-Policy"].startswith('"refused-ip"')


def test_other_tenants_404_looks_exactly_like_a_missing_resource(cast, address):
    own = _get(MISSING, address, token=cast.client_a.token())
    foreign = _get(MISSING, address, token=cast.client_b.token())
    unknown = _get(MISSING.replace("provider-a", "no-such-tenant"), address, cast.client_b.token())
    assert own.status_code == foreign.status_code == unknown.status_code == 404
    assert own.content == foreign.content == unknown.content

    def names(response):
        return {name for name in response.headers if name.lower() != "x-request-id"}

    assert names(own) == names(foreign) == names(unknown)
    assert "RateLimit" in foreign.headers and "RateLimit-Policy" in foreign.headers
    # The other tenant's caller sees its own policies, never provider-a's.
    assert "provider-a" not in foreign["RateLimit-Policy"]
