"""Checked tokens come from each process's cache, and a revocation still bites on the
next request: through a live gunicorn (two worker processes, each with its own cache),
with the services committing the change, and in the process itself when the notice of a
change cannot arrive."""

import time
import uuid

import pytest
import requests
from django.test import Client
from django.utils import timezone

from fhirplatform.limits.engine import limits_reset_local_state
from tenants.models import AccessToken, Grant, TenantStatus
from tenants.scopes import scopes_parse
from tenants.services import (
    client_create,
    client_revoke,
    credential_hash,
    grant_update,
    tenant_create,
    tenant_set_status,
    token_issue,
    token_revoke,
)
from tenants.token_cache import token_cache
from tenants.tokens import token_check

# Enough requests on new connections that both gunicorn workers answer some.
SPREAD = 8


def _grant(slug: str = "provider-a") -> Grant:
    return client_create(
        partner_name=f"Cached {uuid.uuid4().hex[:8]}", tenant_slugs=[slug], scopes="system/*.rs"
    ).grants[0]


def _token(grant: Grant) -> str:
    return token_issue(
        grant=grant, scopes=scopes_parse("system/*.rs"), auth_method="test"
    ).access_token


def _statuses(url: str, token: str) -> set[int]:
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}
    return {requests.get(url, headers=headers, timeout=10).status_code for _ in range(SPREAD)}


def _revoke_token(grant: Grant, token: str) -> None:
    token_revoke(token=AccessToken.objects.get(token_hash=credential_hash(token)))


@pytest.mark.parametrize(
    ("revoke", "refused"),
    [
        (_revoke_token, {401}),
        (lambda grant, token: client_revoke(client=grant.client), {403}),
        (lambda grant, token: grant_update(grant=grant, scopes="system/Observation.rs"), {403}),
    ],
    ids=["token revoked", "client revoked", "grant narrowed"],
)
def test_a_revocation_refuses_a_cached_token_on_every_worker_at_once(
    live_server_url, committed, revoke, refused
):
    grant = _grant()
    token = _token(grant)
    url = f"{live_server_url}/fhir/provider-a/Patient/no-such-patient"
    assert _statuses(url, token) == {404}  # served (and now cached by both workers)
    revoke(grant, token)
    assert _statuses(url, token) == refused


def test_suspending_a_tenant_refuses_its_cached_tokens_at_once(live_server_url, committed):
    tenant = tenant_create(slug="c" + uuid.uuid4().hex[:10], name="Cached tenant")
    grant = _grant(tenant.slug)
    token = _token(grant)
    url = f"{live_server_url}/fhir/{tenant.slug}/Patient/no-such-patient"
    assert _statuses(url, token) == {404}
    tenant_set_status(tenant=tenant, status=TenantStatus.SUSPENDED)
    assert _statuses(url, token) == {403}


@pytest.mark.django_db
def test_a_cached_token_is_checked_without_a_query(cast, django_assert_num_queries):
    authorization = f"Bearer {cast.client_a.token()}"
    first = token_check(authorization=authorization, url_tenant_slug="provider-a")
    with django_assert_num_queries(0):
        again = token_check(authorization=authorization, url_tenant_slug="provider-a")
    assert again.caller == first.caller


@pytest.mark.django_db
def test_a_change_nobody_announced_is_picked_up_within_the_cache_lifetime(cast, settings):
    """A change written past the services (so no notice is published): the cached token
    is served until TOKEN_CACHE_SECONDS have passed, then refused."""
    settings.TOKEN_CACHE_SECONDS = 1
    token = cast.client_a.token()
    url = "/fhir/provider-a/Patient/no-such-patient"
    headers = {"Authorization": f"Bearer {token}"}
    assert Client().get(url, headers=headers).status_code == 404
    AccessToken.objects.filter(token_hash=credential_hash(token)).update(revoked_at=timezone.now())
    assert Client().get(url, headers=headers).status_code == 404  # from the cache
    time.sleep(1.2)
    assert Client().get(url, headers=headers).status_code == 401


@pytest.fixture
def unreachable_limiter(settings):
    """The limiter's Redis gone (nothing listens there); afterwards, the limiter starts
    afresh on the real one, as a new process would."""
    reachable = settings.LIMITS_REDIS_URL
    settings.LIMITS_REDIS_URL = "redis://127.0.0.1:1/0"
    token_cache.clear()
    yield
    settings.LIMITS_REDIS_URL = reachable
    limits_reset_local_state()


@pytest.mark.django_db
@pytest.mark.usefixtures("unreachable_limiter")
def test_while_the_limiter_cannot_reach_redis_every_request_reads_its_token(cast):
    """No admission can read the caller generation then, so no cached entry is trusted."""
    token = cast.client_a.token()
    url = "/fhir/provider-a/Patient/no-such-patient"
    headers = {"Authorization": f"Bearer {token}"}
    assert Client().get(url, headers=headers).status_code == 404
    AccessToken.objects.filter(token_hash=credential_hash(token)).update(revoked_at=timezone.now())
    assert Client().get(url, headers=headers).status_code == 401
