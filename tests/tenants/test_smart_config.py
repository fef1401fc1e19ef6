"""GET /fhir/<tenant>/.well-known/smart-configuration: public discovery, one tenant at a time."""

import re

import pytest

from tenants.models import Tenant, TenantStatus
from tenants.selectors import tenant_fhir_base, token_endpoint_url
from tenants.services import tenant_set_status

pytestmark = pytest.mark.django_db

PATH = "/fhir/{}/.well-known/smart-configuration"


def _without_request_id(response):
    return response.content, {k: v for k, v in response.items() if k != "X-Request-ID"}


def test_configuration_is_public_and_complete(client, cast):
    response = client.get(PATH.format("provider-a"))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/json")
    config = response.json()
    assert config["token_endpoint"] == token_endpoint_url("provider-a")
    assert config["issuer"] == tenant_fhir_base(cast.tenant_a)
    assert config["token_endpoint_auth_methods_supported"] == [
        "client_secret_basic",
        "private_key_jwt",
    ]
    assert config["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]
    assert config["grant_types_supported"] == ["client_credentials"]
    assert "system/*.cruds" in config["scopes_supported"]
    assert "system/*.read" in config["scopes_supported"]
    assert set(config["capabilities"]) >= {
        "client-confidential-symmetric",
        "client-confidential-asymmetric",
        "permission-v1",
        "permission-v2",
    }
    assert config["revocation_endpoint"].endswith("/oauth/revoke")


def test_each_tenant_names_its_own_base_and_token_endpoint(client, cast):
    """A Backend Services client names no tenant in its token request: the endpoint does."""
    a = client.get(PATH.format("provider-a")).json()
    b = client.get(PATH.format("payer-b")).json()
    assert a["issuer"] != b["issuer"]
    assert b["issuer"] == tenant_fhir_base(cast.tenant_b)
    assert b["token_endpoint"] == token_endpoint_url("payer-b")
    assert a["token_endpoint"] == token_endpoint_url("provider-a")


def test_unknown_tenant_gets_the_shared_404(client, cast):
    """No tenant probing: an unknown tenant answers like another tenant's missing resource."""
    unknown = client.get(PATH.format("no-such-tenant"))
    missing = client.get(
        "/fhir/provider-a/Patient/no-such-id",
        headers={"Authorization": f"Bearer {cast.client_a.token()}"},
    )
    assert unknown.status_code == missing.status_code == 404
    assert unknown.content == missing.content
    assert unknown.json()["resourceType"] == "OperationOutcome"


def test_forged_tenant_headers_do_not_change_the_answer(client, cast):
    forged = client.get(
        PATH.format("provider-a"),
        headers={
            "X-Tenant-ID": "payer-b",
            "X-Forwarded-Host": "payer-b.example",
            "X-Forwarded-Prefix": "/fhir/payer-b",
        },
    )
    assert forged.json()["issuer"] == tenant_fhir_base(cast.tenant_a)
    assert not re.search(r"payer-b", forged.content.decode())


def test_suspended_tenant_is_not_advertised(client, cast):
    """Issue 9: a suspended tenant answers like an unknown one (no status probing)."""
    tenant = Tenant.objects.get(pk=cast.tenant_b.pk)
    tenant_set_status(tenant=tenant, status=TenantStatus.SUSPENDED)
    response = client.get(PATH.format("payer-b"))
    assert response.status_code == 404
    assert response.content == client.get(PATH.format("no-such-tenant")).content
