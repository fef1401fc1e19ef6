"""Token endpoint brute-force guard: per client and per IP limits, and failing closed."""

import random
import uuid

import pytest

from tenants.services import client_create
from tests.tenants.identity_support import GRANT, basic, form_post

pytestmark = pytest.mark.django_db


def _ip() -> str:
    # A fresh address per test keeps counters from other tests (and runs) out of the way.
    return f"10.{random.randint(0, 255)}.{random.randint(0, 255)}.{random.randint(1, 254)}"


def _post(client, authorization, ip):
    return form_post(client, "/oauth/token", GRANT, Authorization=authorization, REMOTE_ADDR=ip)


def _new_client():
    return client_create(
        partner_name=f"Limit Partner {uuid.uuid4().hex[:8]}",
        tenant_slugs=["provider-a"],
        scopes="system/*.rs",
    )


def _assert_throttled(response, reason):
    assert response.status_code == 429, response.content
    assert 1 <= int(response["Retry-After"]) <= 3600
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    issue = outcome["issue"][0]
    assert issue["code"] == "throttled"
    assert issue["details"]["coding"][0]["code"] == reason
    assert "access_token" not in outcome


def test_per_client_limit_counts_wrong_secrets_too(client, settings):
    settings.TOKEN_RATE_LIMIT_PER_CLIENT = "3/h"
    settings.TOKEN_RATE_LIMIT_PER_IP = "1000/h"
    issued = _new_client()
    client_id = issued.client.client_id
    for _ in range(2):
        assert _post(client, basic(client_id, "guess"), _ip()).status_code == 401
    assert _post(client, basic(client_id, issued.client_secret), _ip()).status_code == 200
    # From anywhere, the right secret is now refused too: guessing costs the attacker.
    _assert_throttled(_post(client, basic(client_id, issued.client_secret), _ip()), "token-client")


def test_the_other_client_is_not_throttled_by_this_one(client, settings):
    settings.TOKEN_RATE_LIMIT_PER_CLIENT = "1/h"
    settings.TOKEN_RATE_LIMIT_PER_IP = "1000/h"
    noisy, quiet = _new_client(), _new_client()
    ip = _ip()
    assert _post(client, basic(noisy.client.client_id, "x"), ip).status_code == 401
    _assert_throttled(_post(client, basic(noisy.client.client_id, "x"), ip), "token-client")
    response = _post(client, basic(quiet.client.client_id, quiet.client_secret), ip)
    assert response.status_code == 200, response.content


def test_per_ip_limit_stops_spraying_across_clients(client, settings):
    settings.TOKEN_RATE_LIMIT_PER_CLIENT = "1000/h"
    settings.TOKEN_RATE_LIMIT_PER_IP = "2/h"
    ip = _ip()
    for _ in range(2):
        assert _post(client, basic(uuid.uuid4().hex, "guess"), ip).status_code == 401
    _assert_throttled(_post(client, basic(uuid.uuid4().hex, "guess"), ip), "token-ip")
    # Requests with no credentials at all count against the IP as well.
    other_ip = _ip()
    for _ in range(2):
        assert form_post(client, "/oauth/token", GRANT, REMOTE_ADDR=other_ip).status_code == 401
    _assert_throttled(form_post(client, "/oauth/token", GRANT, REMOTE_ADDR=other_ip), "token-ip")


def test_limit_store_unreachable_fails_closed(client, settings, cast):
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"socket_timeout": 0.2, "socket_connect_timeout": 0.2},
        }
    }
    a = cast.client_a
    response = _post(client, basic(a.client.client_id, a.secret), _ip())
    assert response.status_code == 503
    assert response.json()["issue"][0]["code"] == "transient"
    assert "access_token" not in response.json()
