"""Tokens follow governance: a token lives only while its client, grant and tenant have
stayed active since it was issued, and holds no more than its grant holds now.

Every case talks to the FHIR API through the real pipeline and PostgreSQL: the old token
is refused, a token issued after the change works.
"""

import uuid

import pytest
from django.test import Client

from tenants.models import ApiClient, Grant, Tenant, TenantStatus
from tenants.scopes import scopes_parse
from tenants.services import (
    IssuedClient,
    client_activate,
    client_create,
    client_revoke,
    grant_activate,
    grant_revoke,
    grant_update,
    tenant_set_status,
    token_issue,
)
from tests.tenants.identity_support import basic, form_post

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("roomy_token_limits")]


def _fresh_client(scopes: str = "system/*.cruds") -> IssuedClient:
    return client_create(
        partner_name=f"Governed {uuid.uuid4().hex[:8]}", tenant_slugs=["provider-a"], scopes=scopes
    )


def _token(grant: Grant, scopes: str | None = None) -> str:
    parsed = scopes_parse(scopes or grant.scopes)
    return token_issue(grant=grant, scopes=parsed, auth_method="test").access_token


def _search(token: str, resource_type: str = "Patient", slug: str = "provider-a"):
    return Client().get(
        f"/fhir/{slug}/{resource_type}?_id=nobody", headers={"Authorization": f"Bearer {token}"}
    )


def _outcome(response) -> tuple[int, str]:
    return response.status_code, response.json()["issue"][0]["code"]


def _refused_as_outlived(response) -> None:
    assert _outcome(response) == (401, "login"), response.content
    assert "invalid_token" in response["WWW-Authenticate"]


def test_reactivated_client_does_not_revive_its_old_token():
    issued = _fresh_client()
    old = _token(issued.grants[0])
    assert _search(old).status_code == 200
    client_revoke(client=issued.client)
    assert _outcome(_search(old)) == (403, "suspended")  # while revoked: the cause is named
    client_activate(client=ApiClient.objects.get(pk=issued.client.pk))
    _refused_as_outlived(_search(old))
    assert _search(_token(Grant.objects.get(pk=issued.grants[0].pk))).status_code == 200


def test_reactivated_grant_does_not_revive_its_old_token():
    issued = _fresh_client()
    grant = issued.grants[0]
    old = _token(grant)
    grant_revoke(grant=grant)
    assert _outcome(_search(old)) == (403, "suspended")
    grant_activate(grant=Grant.objects.get(pk=grant.pk))
    _refused_as_outlived(_search(old))
    assert _search(_token(Grant.objects.get(pk=grant.pk))).status_code == 200


def test_reactivated_tenant_does_not_revive_tokens_issued_before_the_suspension(cast):
    old = cast.client_a.token()
    tenant = Tenant.objects.get(pk=cast.tenant_a.pk)
    tenant_set_status(tenant=tenant, status=TenantStatus.SUSPENDED)
    assert _outcome(_search(old)) == (403, "suspended")
    tenant_set_status(tenant=tenant, status=TenantStatus.ACTIVE)
    _refused_as_outlived(_search(old))
    assert _search(cast.client_a.token()).status_code == 200


def test_a_token_from_the_token_endpoint_works_after_reactivation(client, cast):
    issued = _fresh_client()
    client_revoke(client=issued.client)
    client_activate(client=ApiClient.objects.get(pk=issued.client.pk))
    assert issued.client_secret
    response = form_post(
        client,
        "/oauth/token",
        {"grant_type": "client_credentials", "scope": "system/*.rs"},
        Authorization=basic(issued.client.client_id, issued.client_secret),
    )
    assert response.status_code == 200, response.content
    assert _search(response.json()["access_token"]).status_code == 200


def test_narrowing_a_grant_narrows_its_live_tokens_at_once():
    issued = _fresh_client("system/Patient.rs system/Observation.rs")
    grant = issued.grants[0]
    token = _token(grant)
    assert _search(token, "Observation").status_code == 200
    grant_update(grant=grant, scopes="system/Patient.rs")
    refused = _search(token, "Observation")
    assert _outcome(refused) == (403, "forbidden")
    assert "system/Observation.s" in refused.json()["issue"][0]["diagnostics"]
    assert _search(token, "Patient").status_code == 200  # the rest is kept


def test_narrowing_a_wildcard_grant_narrows_a_wildcard_token():
    issued = _fresh_client("system/*.cruds")
    token = _token(issued.grants[0])
    grant_update(grant=issued.grants[0], scopes="system/Patient.r")
    assert _outcome(_search(token, "Patient")) == (403, "forbidden")  # search ('s') was cut
    assert _outcome(_search(token, "Observation")) == (403, "forbidden")
    read = Client().get(
        "/fhir/provider-a/Patient/nobody", headers={"Authorization": f"Bearer {token}"}
    )
    assert _outcome(read) == (404, "not-found")  # read ('r') is still held


def test_widening_a_grant_never_widens_a_token():
    issued = _fresh_client("system/Patient.rs")
    token = _token(issued.grants[0])
    grant_update(grant=issued.grants[0], scopes="system/*.cruds")
    assert _search(token, "Patient").status_code == 200
    assert _outcome(_search(token, "Observation")) == (403, "forbidden")


def test_the_other_tenant_cannot_tell_an_outlived_token_from_nothing(cast):
    """An outlived token on the other tenant's URL gets the shared 404, byte for byte."""
    issued = _fresh_client()
    old = _token(issued.grants[0])
    client_revoke(client=issued.client)
    client_activate(client=ApiClient.objects.get(pk=issued.client.pk))
    elsewhere = _search(old, slug=cast.tenant_b.slug)
    unknown = _search(old, slug="no-such-tenant")
    assert elsewhere.status_code == unknown.status_code == 404
    assert elsewhere.content == unknown.content
