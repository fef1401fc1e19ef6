"""The positive path end to end: a real HTTP client, a real gunicorn on loopback.

Discover the token endpoint, get a token with each auth method, call the FHIR API.
"""

import uuid

import pytest
import requests

from tenants.services import client_create
from tests.tenants.identity_support import JWT_BEARER, assertion, ec_key, jwks_of, rsa_key

pytestmark = [pytest.mark.live, pytest.mark.django_db]


@pytest.fixture(scope="module")
def partner_client(live_server_url, django_db_blocker):
    """A partner client committed outside any test transaction, so the server sees it."""
    with django_db_blocker.unblock():
        return client_create(
            partner_name=f"Live Partner {uuid.uuid4().hex[:8]}",
            tenant_slugs=["provider-a"],
            scopes="system/Patient.rs system/Observation.rs",
            jwks=jwks_of((rsa_key(), "rsa-1"), (ec_key(), "ec-1")),
        )


def _discover(base: str, tenant: str) -> dict:
    response = requests.get(f"{base}/fhir/{tenant}/.well-known/smart-configuration", timeout=10)
    assert response.status_code == 200
    return response.json()


def _search_patients(base: str, token: str, tenant: str = "provider-a") -> requests.Response:
    return requests.get(
        f"{base}/fhir/{tenant}/Patient",
        headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"},
        timeout=10,
    )


def test_client_secret_basic_end_to_end(live_server_url, partner_client):
    config = _discover(live_server_url, "provider-a")
    assert config["token_endpoint"] == f"{live_server_url}/oauth/provider-a/token"
    response = requests.post(
        config["token_endpoint"],
        auth=(partner_client.client.client_id, partner_client.client_secret),
        data={"grant_type": "client_credentials", "scope": "system/Patient.read"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["scope"] == "system/Patient.rs"
    assert body["aud"] == f"{live_server_url}/fhir/provider-a"
    assert response.headers["Cache-Control"] == "no-store"

    search = _search_patients(live_server_url, body["access_token"])
    assert search.status_code == 200, search.text
    assert search.json()["resourceType"] == "Bundle"
    # Scope was narrowed to Patient: Observation is refused, naming the missing scope.
    observations = requests.get(
        f"{live_server_url}/fhir/provider-a/Observation",
        headers={"Authorization": f"Bearer {body['access_token']}"},
        timeout=10,
    )
    assert observations.status_code == 403
    assert "system/Observation.s" in observations.json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    ("key", "kid", "alg"), [("rsa", "rsa-1", "RS384"), ("ec", "ec-1", "ES384")]
)
def test_private_key_jwt_end_to_end(live_server_url, partner_client, key, kid, alg):
    config = _discover(live_server_url, "provider-a")
    assert alg in config["token_endpoint_auth_signing_alg_values_supported"]
    signed = assertion(
        partner_client.client.client_id,
        rsa_key() if key == "rsa" else ec_key(),
        kid,
        alg=alg,
        aud=config["token_endpoint"],
    )
    form = {
        "grant_type": "client_credentials",
        "scope": "system/Patient.rs",
        "client_assertion_type": JWT_BEARER,
        "client_assertion": signed,
        "resource": config["issuer"],
    }
    response = requests.post(config["token_endpoint"], data=form, timeout=10)
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    assert _search_patients(live_server_url, token).status_code == 200

    replay = requests.post(config["token_endpoint"], data=form, timeout=10)
    assert replay.status_code == 401
    assert replay.json()["error"] == "invalid_client"


def test_the_other_tenant_cannot_be_reached_over_http(live_server_url, partner_client):
    response = requests.post(
        f"{live_server_url}/oauth/token",
        auth=(partner_client.client.client_id, partner_client.client_secret),
        data={"grant_type": "client_credentials", "scope": "system/*.rs"},
        timeout=10,
    )
    token = response.json()["access_token"]
    other = _search_patients(live_server_url, token, tenant="payer-b")
    unknown = _search_patients(live_server_url, token, tenant="no-such-tenant")
    missing = requests.get(
        f"{live_server_url}/fhir/provider-a/Patient/{uuid.uuid4()}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert other.status_code == unknown.status_code == missing.status_code == 404
    assert other.content == unknown.content == missing.content
    forged = requests.get(
        f"{live_server_url}/fhir/payer-b/Patient",
        headers={
            "Authorization": f"Bearer {token}",
            "X-Tenant-ID": "provider-a",
            "X-Forwarded-Host": "provider-a",
            "X-Forwarded-Prefix": "/fhir/provider-a",
        },
        timeout=10,
    )
    assert forged.status_code == 404
    assert forged.content == missing.content
    # Asking for a token on payer-b is refused at the token endpoint too.
    refused = requests.post(
        f"{live_server_url}/oauth/token",
        auth=(partner_client.client.client_id, partner_client.client_secret),
        data={"grant_type": "client_credentials", "resource": f"{live_server_url}/fhir/payer-b"},
        timeout=10,
    )
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_target"


@pytest.fixture(scope="module")
def two_tenant_client(live_server_url, django_db_blocker):
    """A key-based client with grants on both cast tenants."""
    with django_db_blocker.unblock():
        return client_create(
            partner_name=f"Two Tenants {uuid.uuid4().hex[:8]}",
            tenant_slugs=["provider-a", "payer-b"],
            scopes="system/Patient.rs",
            jwks=jwks_of((rsa_key(), "rsa-1")),
        )


def _key_form(client_id: str, aud: str, **extra: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "scope": "system/Patient.read",
        "client_assertion_type": JWT_BEARER,
        "client_assertion": assertion(client_id, rsa_key(), "rsa-1", alg="RS384", aud=aud),
        **extra,
    }


def test_a_tenants_own_token_endpoint_names_the_tenant(live_server_url, two_tenant_client):
    """A Backend Services client sends no `resource`: at the shared endpoint a client of two
    tenants cannot be told apart; at the tenant's own (its smart-configuration's) it can."""
    client_id = two_tenant_client.client.client_id
    shared = f"{live_server_url}/oauth/token"
    refused = requests.post(shared, data=_key_form(client_id, shared), timeout=10)
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_request"
    for tenant in ("provider-a", "payer-b"):
        endpoint = _discover(live_server_url, tenant)["token_endpoint"]
        response = requests.post(endpoint, data=_key_form(client_id, endpoint), timeout=10)
        assert response.status_code == 200, response.text
        assert response.json()["tenant"] == tenant
        token = response.json()["access_token"]
        assert _search_patients(live_server_url, token, tenant=tenant).status_code == 200


def test_a_tenants_token_endpoint_refuses_another_tenant_or_audience(
    live_server_url, two_tenant_client
):
    client_id = two_tenant_client.client.client_id
    endpoint = f"{live_server_url}/oauth/provider-a/token"
    other_base = f"{live_server_url}/fhir/payer-b"
    contradicted = requests.post(
        endpoint, data=_key_form(client_id, endpoint, resource=other_base), timeout=10
    )
    assert contradicted.status_code == 400
    assert contradicted.json()["error"] == "invalid_target"
    # An assertion made for the shared endpoint is not one for the tenant's.
    shared = f"{live_server_url}/oauth/token"
    wrong_aud = requests.post(endpoint, data=_key_form(client_id, shared), timeout=10)
    assert wrong_aud.status_code == 401
    assert wrong_aud.json()["error"] == "invalid_client"
    unknown = f"{live_server_url}/oauth/no-such-tenant/token"
    nowhere = requests.post(unknown, data=_key_form(client_id, unknown), timeout=10)
    assert nowhere.status_code == 400
    assert nowhere.json()["error"] == "invalid_target"
