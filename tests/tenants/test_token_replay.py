"""A spent jti stays spent when Redis forgets: PostgreSQL is the record of used jtis.

The endpoint's replay Redis here is a private redis-server the test restarts for real
(no persistence, so it comes back empty, as a crashed cache does).
"""

import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from django.utils import timezone

from tenants.models import AccessToken, ApiClient, UsedJti
from tenants.services import client_create, jti_hash, jti_spend, jtis_purge_expired
from tenants.tasks import tokens_and_jtis_purge_expired
from tests.redis_support import PrivateRedis
from tests.tenants.identity_support import assertion, ec_key, form_post, jwks_of, jwt_form, rsa_key

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("roomy_token_limits")]


@pytest.fixture
def replay_redis(tmp_path, settings) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    settings.REDIS_URL = server.url  # the Redis the token endpoint's replay check uses
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def key_client(cast) -> ApiClient:
    return client_create(
        partner_name=f"Replay {uuid.uuid4().hex[:8]}",
        tenant_slugs=["provider-a"],
        scopes="system/Patient.rs",
        jwks=jwks_of((rsa_key(), "rsa-1"), (ec_key(), "ec-1")),
        with_secret=False,
    ).client


@pytest.fixture
def post(client) -> Callable[[dict[str, str]], object]:
    return lambda data: form_post(client, "/oauth/token", data)


def _replay_refused(response) -> None:
    assert response.status_code == 401, response.content
    assert response.json()["error"] == "invalid_client"
    assert "already been used" in response.json()["error_description"]


def test_a_jti_used_before_a_redis_restart_is_refused_after_it(key_client, post, replay_redis):
    jti = uuid.uuid4().hex
    signed = assertion(key_client.client_id, rsa_key(), "rsa-1", jti=jti)
    assert post(jwt_form(signed)).status_code == 200
    assert replay_redis.client().dbsize() == 1  # the fast check did see it

    replay_redis.kill()
    replay_redis.start()
    assert replay_redis.client().dbsize() == 0  # Redis forgot

    _replay_refused(post(jwt_form(signed)))
    again = assertion(key_client.client_id, ec_key(), "ec-1", alg="ES384", jti=jti)
    _replay_refused(post(jwt_form(again)))
    assert AccessToken.objects.filter(client=key_client).count() == 1
    # A fresh jti still works after the restart.
    fresh = assertion(key_client.client_id, rsa_key(), "rsa-1")
    assert post(jwt_form(fresh)).status_code == 200


def test_a_flushed_redis_does_not_reopen_the_replay_window(key_client, post, replay_redis):
    signed = assertion(key_client.client_id, rsa_key(), "rsa-1")
    assert post(jwt_form(signed)).status_code == 200
    replay_redis.client().flushall()
    _replay_refused(post(jwt_form(signed)))


def test_the_used_jti_is_recorded_until_the_assertion_expires(key_client, post, replay_redis):
    jti = uuid.uuid4().hex
    signed = assertion(key_client.client_id, rsa_key(), "rsa-1", jti=jti, exp_in=120)
    before = timezone.now()
    assert post(jwt_form(signed)).status_code == 200
    row = UsedJti.objects.get(client=key_client)
    assert row.jti_hash == jti_hash(jti) and jti not in row.jti_hash  # only the digest
    assert before + timedelta(seconds=110) < row.expires_at < before + timedelta(seconds=140)


def test_jti_spend_is_once_per_client_until_expiry(key_client, cast):
    later = timezone.now() + timedelta(minutes=5)
    assert jti_spend(client=key_client, jti="same", expires_at=later)
    assert not jti_spend(client=key_client, jti="same", expires_at=later)
    # Another client's jti space is its own.
    assert jti_spend(client=cast.client_a.client, jti="same", expires_at=later)
    # Once the assertion has expired, the row guards nothing: the jti may be spent again.
    UsedJti.objects.filter(client=key_client).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert jti_spend(client=key_client, jti="same", expires_at=later)


def test_the_purge_task_removes_expired_jtis_only(key_client):
    now = timezone.now()
    jti_spend(client=key_client, jti="old", expires_at=now - timedelta(seconds=1))
    jti_spend(client=key_client, jti="live", expires_at=now + timedelta(minutes=5))
    result = tokens_and_jtis_purge_expired.apply().get()
    assert result["jtis"] >= 1
    assert list(UsedJti.objects.filter(client=key_client).values_list("jti_hash", flat=True)) == [
        jti_hash("live")
    ]
    assert not UsedJti.objects.filter(expires_at__lt=now).exists()
    assert jtis_purge_expired() == 0
