"""The tenants write door: each update service applies only what it is given, checks it
with the same rule as creation, and refuses bad input without changing anything."""

import uuid

import pytest

from tenants.models import ApiClient, ClientStatus, Grant, GrantStatus, RatePlan, Tenant
from tenants.services import (
    UNCHANGED,
    ProvisioningError,
    client_create,
    client_update,
    grant_create,
    grant_update,
    rate_plan_count_only,
    rate_plan_create,
    rate_plan_get,
    tenant_update,
)
from tests.tenants.identity_support import jwks_of, public_jwk, rsa_key

pytestmark = pytest.mark.django_db


def _fresh_client(slug: str = "provider-a", **kwargs):
    return client_create(
        partner_name=f"Services {uuid.uuid4().hex[:8]}",
        tenant_slugs=[slug],
        scopes="system/*.rs",
        **kwargs,
    )


def test_grant_create_checks_scopes_and_allows_one_grant_per_client_and_tenant(cast):
    issued = _fresh_client()
    plan = rate_plan_get(name="standard")
    with pytest.raises(ProvisioningError, match="unknown resource type"):
        grant_create(client=issued.client, tenant=cast.tenant_b, scopes="system/Nope.rs", plan=plan)
    with pytest.raises(ProvisioningError, match="already has a grant"):
        grant_create(client=issued.client, tenant=cast.tenant_a, scopes="system/*.rs", plan=plan)
    grant = grant_create(
        client=issued.client, tenant=cast.tenant_b, scopes="system/Patient.read", plan=plan
    )
    assert (grant.scopes, grant.status, grant.purposes) == ("system/Patient.read", "active", [])


def test_grant_update_refuses_bad_input_and_changes_nothing(cast):
    grant = _fresh_client().grants[0]
    for bad in ({"scopes": "system/Patient.fly"}, {"purposes": "TREAT"}):
        with pytest.raises(ProvisioningError):
            grant_update(grant=Grant.objects.get(pk=grant.pk), **bad)  # type: ignore[arg-type]
    stored = Grant.objects.get(pk=grant.pk)
    assert (stored.scopes, stored.purposes) == (grant.scopes, grant.purposes)


def test_grant_update_applies_only_what_it_is_given(cast):
    grant = _fresh_client().grants[0]
    grant_update(grant=grant, status=GrantStatus.REVOKED)
    stored = Grant.objects.get(pk=grant.pk)
    assert stored.status == GrantStatus.REVOKED and stored.scopes == "system/*.rs"
    grant_update(grant=stored, scopes="system/Observation.rs", status=GrantStatus.ACTIVE)
    stored = Grant.objects.get(pk=grant.pk)
    assert (stored.scopes, stored.status) == ("system/Observation.rs", GrantStatus.ACTIVE)


def test_tenant_update_refuses_an_empty_name_and_an_unknown_region(cast):
    tenant = Tenant.objects.get(pk=cast.tenant_a.pk)
    for bad in ({"name": "  "}, {"data_region": "mars-1"}, {"isolation_tier": "shared"}):
        with pytest.raises(ProvisioningError):
            tenant_update(tenant=tenant, **bad)  # type: ignore[arg-type]
    stored = Tenant.objects.get(pk=cast.tenant_a.pk)
    assert (stored.name, stored.data_region) == (cast.tenant_a.name, cast.tenant_a.data_region)


def test_client_update_keeps_what_is_unchanged_and_revokes_through_client_revoke(cast):
    issued = _fresh_client()
    client_update(client=issued.client, name="Renamed", jwks=UNCHANGED, status=ClientStatus.REVOKED)
    stored = ApiClient.objects.get(pk=issued.client.pk)
    assert (stored.name, stored.status, stored.jwks) == ("Renamed", "revoked", None)
    assert stored.revoked_at is not None


def test_client_update_refuses_private_key_material(cast):
    issued = _fresh_client()
    name = issued.client.name
    leaked = {"keys": [public_jwk(rsa_key(), "k-1") | {"d": "AQAB"}]}
    with pytest.raises(ProvisioningError, match="private key material"):
        client_update(client=issued.client, name="Leaky", jwks=leaked)
    assert issued.client.name == name
    stored = ApiClient.objects.get(pk=issued.client.pk)
    assert (stored.jwks, stored.name) == (None, name)
    public = jwks_of((rsa_key(), "k-1"))
    client_update(client=stored, jwks=public)
    assert ApiClient.objects.get(pk=issued.client.pk).jwks == public


def test_rate_plan_create_applies_the_model_rules(cast):
    name = f"plan-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ProvisioningError, match="daily_quota"):
        rate_plan_create(name=name, read_per_minute=1)
    assert not RatePlan.objects.filter(name=name).exists()


def test_rate_plan_count_only_is_made_once_and_never_refuses(cast):
    name = f"count-{uuid.uuid4().hex[:8]}"
    plan = rate_plan_count_only(name=name, description="tests")
    assert rate_plan_count_only(name=name, description="other") == plan
    assert plan.dry_run
