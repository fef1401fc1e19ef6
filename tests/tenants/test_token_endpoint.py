"""POST /oauth/token with client_secret_basic: issuing, tenant choice, scopes, OAuth errors."""

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from tenants.models import AccessToken, Tenant, TenantStatus
from tenants.selectors import tenant_fhir_base
from tenants.services import client_create, client_revoke, grant_revoke, tenant_set_status
from tests.tenants.identity_support import GRANT, basic, form_post

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("roomy_token_limits")]


@pytest.fixture
def post(client):
    def _post(data, authorization=None, **headers):
        if authorization:
            headers["Authorization"] = authorization
        return form_post(client, "/oauth/token", data, **headers)

    return _post


def _new_client(slugs, scopes="system/Patient.rs system/Observation.rs"):
    return client_create(
        partner_name=f"Partner {uuid.uuid4().hex[:8]}", tenant_slugs=slugs, scopes=scopes
    )


def _assert_oauth_error(response, status, error):
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["error"] == error
    assert body["error_description"]
    assert "access_token" not in body
    assert response["Cache-Control"] == "no-store"


def test_client_secret_basic_issues_a_token_bound_to_the_clients_tenant(cast, post):
    a = cast.client_a
    response = post(GRANT, basic(a.client.client_id, a.secret))
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert 0 < body["expires_in"] <= 300
    assert body["scope"] == "system/*.cruds"
    assert body["tenant"] == "provider-a"
    assert body["aud"] == tenant_fhir_base(cast.tenant_a)
    assert response["Cache-Control"] == "no-store"
    record = AccessToken.objects.get(
        client=a.client,
        auth_method="client_secret_basic",
        issued_at__gte=timezone.now() - timedelta(seconds=30),
    )
    assert record.tenant == cast.tenant_a
    assert body["access_token"] not in record.token_hash  # only the hash is stored


def test_requested_scopes_are_narrowed_to_the_grant(cast, post):
    issued = _new_client(["provider-a"], scopes="system/Patient.rs system/Observation.read")
    response = post(
        GRANT | {"scope": "system/Patient.cruds system/Observation.rs system/Claim.r"},
        basic(issued.client.client_id, issued.client_secret),
    )
    assert response.status_code == 200, response.content
    assert response.json()["scope"] == "system/Patient.rs system/Observation.rs"


def test_v1_wildcard_scope_request_is_understood(cast, post):
    a = cast.client_a
    response = post(GRANT | {"scope": "system/*.read"}, basic(a.client.client_id, a.secret))
    assert response.status_code == 200
    assert response.json()["scope"] == "system/*.rs"


@pytest.mark.parametrize(
    ("scope", "why"),
    [
        ("system/Claim.rs", "not granted"),
        ("patient/Patient.read", "not a system scope"),
        ("system/Patient.sr", "letters out of order"),
        ("system/Nonsense.rs", "unknown type"),
    ],
)
def test_bad_or_ungranted_scope_is_invalid_scope(post, scope, why):
    issued = _new_client(["provider-a"])
    response = post(GRANT | {"scope": scope}, basic(issued.client.client_id, issued.client_secret))
    _assert_oauth_error(response, 400, "invalid_scope")
    assert not AccessToken.objects.filter(client=issued.client).exists()


def test_wrong_secret_unknown_client_and_revoked_client_look_the_same(cast, post):
    a = cast.client_a
    wrong = post(GRANT, basic(a.client.client_id, a.secret + "x"))
    unknown = post(GRANT, basic("no-such-client", a.secret))
    revoked = _new_client(["provider-a"])
    client_revoke(client=revoked.client)
    gone = post(GRANT, basic(revoked.client.client_id, revoked.client_secret))
    for response in (wrong, unknown, gone):
        _assert_oauth_error(response, 401, "invalid_client")
        assert response["WWW-Authenticate"].startswith("Basic")
    assert wrong.json() == unknown.json() == gone.json()
    assert not AccessToken.objects.filter(client=revoked.client).exists()


@pytest.mark.parametrize(
    ("data", "headers", "status", "error"),
    [
        ({}, {}, 401, "invalid_client"),
        ({"grant_type": "password"}, "basic", 400, "unsupported_grant_type"),
        ({}, "basic", 400, "unsupported_grant_type"),
        (
            {"grant_type": "client_credentials", "client_secret": "x"},
            "basic",
            400,
            "invalid_request",
        ),
        (GRANT, {"Authorization": "Basic !!!not-base64"}, 400, "invalid_request"),
        (GRANT, {"Authorization": "Bearer abc"}, 400, "invalid_request"),
        (GRANT, {"Authorization": "Basic " + "bm9jb2xvbg=="}, 400, "invalid_request"),
    ],
    ids=[
        "no-auth",
        "password-grant",
        "no-grant-type",
        "secret-post",
        "bad-base64",
        "bearer-scheme",
        "no-colon",
    ],
)
def test_malformed_token_requests_get_oauth_errors(cast, post, data, headers, status, error):
    a = cast.client_a
    if headers == "basic":
        headers = {"Authorization": basic(a.client.client_id, a.secret)}
    before = AccessToken.objects.count()
    _assert_oauth_error(post(data, **headers), status, error)
    assert AccessToken.objects.count() == before


def test_json_body_and_query_parameters_are_refused(cast, client):
    a = cast.client_a
    auth = {"Authorization": basic(a.client.client_id, a.secret)}
    as_json = client.post("/oauth/token", data=GRANT, content_type="application/json", headers=auth)
    _assert_oauth_error(as_json, 400, "invalid_request")
    in_query = form_post(client, "/oauth/token?grant_type=client_credentials", {}, **auth)
    _assert_oauth_error(in_query, 400, "invalid_request")
    repeated = client.post(
        "/oauth/token",
        data="grant_type=client_credentials&scope=a&scope=b",
        content_type="application/x-www-form-urlencoded",
        headers=auth,
    )
    _assert_oauth_error(repeated, 400, "invalid_request")


def test_get_is_not_allowed(client):
    response = client.get("/oauth/token")
    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert response.json()["error"] == "invalid_request"


def test_client_with_several_grants_must_name_the_tenant(cast, post):
    issued = _new_client(["provider-a", "payer-b"])
    auth = basic(issued.client.client_id, issued.client_secret)
    _assert_oauth_error(post(GRANT, auth), 400, "invalid_request")
    for tenant in (cast.tenant_a, cast.tenant_b):
        for parameter in ("resource", "aud"):
            response = post(GRANT | {parameter: tenant_fhir_base(tenant) + "/"}, auth)
            assert response.status_code == 200, response.content
            assert response.json()["tenant"] == tenant.slug
            assert response.json()["aud"] == tenant_fhir_base(tenant)


def test_the_other_tenant_cannot_be_named_in_resource(cast, post):
    """client_a has no grant on payer-b: naming it, or an unknown tenant, gets one answer."""
    a = cast.client_a
    auth = basic(a.client.client_id, a.secret)
    other = post(GRANT | {"resource": tenant_fhir_base(cast.tenant_b)}, auth)
    unknown = post(GRANT | {"resource": tenant_fhir_base(cast.tenant_b) + "-nope"}, auth)
    foreign = post(GRANT | {"resource": "https://elsewhere.example/fhir/provider-a"}, auth)
    for response in (other, unknown, foreign):
        _assert_oauth_error(response, 400, "invalid_target")
    assert other.json() == unknown.json() == foreign.json()


def test_revoked_grant_and_suspended_tenant_get_no_token(cast, post):
    revoked = _new_client(["provider-a"])
    grant_revoke(grant=revoked.grants[0])
    _assert_oauth_error(
        post(GRANT, basic(revoked.client.client_id, revoked.client_secret)), 400, "invalid_grant"
    )

    suspended = _new_client(["provider-a"])
    tenant = Tenant.objects.get(pk=cast.tenant_a.pk)
    tenant_set_status(tenant=tenant, status=TenantStatus.SUSPENDED)
    response = post(GRANT, basic(suspended.client.client_id, suspended.client_secret))
    _assert_oauth_error(response, 400, "invalid_grant")
    assert "suspended" in response.json()["error_description"]
    assert not AccessToken.objects.filter(client__in=[revoked.client, suspended.client]).exists()


def test_deleted_grant_means_no_grant(cast, post):
    issued = _new_client(["provider-a"])
    issued.grants[0].delete()
    _assert_oauth_error(
        post(GRANT, basic(issued.client.client_id, issued.client_secret)), 400, "invalid_grant"
    )


def test_every_response_carries_a_request_id(cast, post):
    response = post(GRANT, basic("x", "y"), **{"X-Request-ID": "req-identity-0001"})
    assert response["X-Request-ID"] == "req-identity-0001"
