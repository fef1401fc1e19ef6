"""The admin's change forms write only through the tenants services: a bad value is a
form error that changes nothing, and a status change does what the service does."""

import json
import uuid
from unittest import mock
from urllib.parse import urlencode

import pytest
from django.test import Client

from tenants.models import (
    ApiClient,
    ClientStatus,
    Grant,
    GrantStatus,
    RatePlan,
    Tenant,
    TenantStatus,
)
from tenants.scopes import scopes_parse
from tenants.services import (
    IssuedClient,
    client_create,
    client_revoke,
    grant_create,
    grant_revoke,
    partner_create,
    rate_plan_count_only,
    rate_plan_get,
    rate_plan_update,
    tenant_create,
    tenant_set_status,
    token_issue,
)
from tests.tenants.admin_support import (
    change_form_data,
    form_errors,
    inline_row_add,
    inline_row_index,
    operator_browser,
)
from tests.tenants.identity_support import jwks_of, public_jwk, rsa_key

pytestmark = pytest.mark.django_db


def _fresh_client(slug: str = "provider-a", **kwargs) -> IssuedClient:
    return client_create(
        partner_name=f"Admin Partner {uuid.uuid4().hex[:8]}",
        tenant_slugs=[slug],
        scopes="system/*.rs",
        **kwargs,
    )


def _token(grant: Grant) -> str:
    return token_issue(
        grant=grant, scopes=scopes_parse(grant.scopes), auth_method="test"
    ).access_token


def _search(token: str, slug: str = "provider-a"):
    return Client().get(
        f"/fhir/{slug}/Patient?_id=nobody", headers={"Authorization": f"Bearer {token}"}
    )


def _client_url(client: ApiClient) -> str:
    return f"/admin/tenants/apiclient/{client.pk}/change/"


def test_admin_refuses_a_jwks_with_private_key_material(cast):
    issued = _fresh_client()
    browser = operator_browser("ops-jwks")
    url = _client_url(issued.client)
    data = change_form_data(browser.get(url))
    leaked = public_jwk(rsa_key(), "leaked-1") | {"d": "AQAB", "p": "AQAB", "q": "AQAB"}
    data["jwks"] = json.dumps({"keys": [leaked]})
    assert "private key material" in form_errors(browser.post(url, data))
    assert ApiClient.objects.get(pk=issued.client.pk).jwks is None

    public = jwks_of((rsa_key(), "rsa-1"))
    data["jwks"] = json.dumps(public)
    assert browser.post(url, data).status_code == 302
    assert ApiClient.objects.get(pk=issued.client.pk).jwks == public


def test_admin_refuses_to_leave_a_key_only_client_without_keys(cast):
    issued = _fresh_client(jwks=jwks_of((rsa_key(), "rsa-1")), with_secret=False)
    browser = operator_browser("ops-keyless")
    url = _client_url(issued.client)
    data = change_form_data(browser.get(url)) | {"jwks": ""}
    assert "needs a secret or a JWKS" in form_errors(browser.post(url, data))
    assert ApiClient.objects.get(pk=issued.client.pk).jwks == issued.client.jwks


def test_client_revoked_in_the_change_form_is_revoked_like_client_revoke(cast):
    issued = _fresh_client()
    token = _token(issued.grants[0])
    assert _search(token).status_code == 200
    browser = operator_browser("ops-revoke")
    url = _client_url(issued.client)
    data = change_form_data(browser.get(url)) | {"status": ClientStatus.REVOKED}
    assert browser.post(url, data).status_code == 302

    stored = ApiClient.objects.get(pk=issued.client.pk)
    assert stored.status == ClientStatus.REVOKED and stored.revoked_at is not None
    refused = _search(token)
    assert refused.status_code == 403
    assert refused.json()["issue"][0]["code"] == "suspended"

    browser.post(url, data | {"status": ClientStatus.ACTIVE})
    assert ApiClient.objects.get(pk=issued.client.pk).revoked_at is None
    # Re-activation serves new tokens; the one the revocation cut off stays dead.
    assert _search(token).status_code == 401
    assert _search(_token(issued.grants[0])).status_code == 200


def test_tenant_status_change_in_the_form_goes_through_tenant_set_status(cast):
    token = cast.client_b.token()
    browser = operator_browser("ops-tenant")
    url = f"/admin/tenants/tenant/{cast.tenant_b.pk}/change/"
    data = change_form_data(browser.get(url)) | {"status": "suspended", "name": "Payer B2"}
    with mock.patch("tenants.services.tenants.tenant_set_status", wraps=tenant_set_status) as spy:
        assert browser.post(url, data).status_code == 302
    spy.assert_called_once()
    assert spy.call_args.kwargs["status"] == "suspended"
    stored = Tenant.objects.get(pk=cast.tenant_b.pk)
    assert (stored.status, stored.name) == ("suspended", "Payer B2")
    assert _search(token, slug="payer-b").json()["issue"][0]["code"] == "suspended"


def test_grant_added_inline_is_checked_and_created_by_the_grant_service(cast):
    issued = _fresh_client(slug="payer-b")
    browser = operator_browser("ops-grant-add")
    url = _client_url(issued.client)
    data = inline_row_add(
        change_form_data(browser.get(url)),
        "grants",
        tenant=cast.tenant_a.pk,
        scopes="system/Unicorn.rs",
        purposes="[]",
        plan=issued.grants[0].plan_id,
        status=GrantStatus.ACTIVE,
    )
    assert "unknown resource type" in form_errors(browser.post(url, data))
    assert not Grant.objects.filter(client=issued.client, tenant=cast.tenant_a).exists()

    new_row = int(data["grants-TOTAL_FORMS"]) - 1
    data[f"grants-{new_row}-scopes"] = "system/Patient.read"
    with mock.patch("tenants.services.grant_create", wraps=grant_create) as spy:
        assert browser.post(url, data).status_code == 302
    spy.assert_called_once()
    added = Grant.objects.get(client=issued.client, tenant=cast.tenant_a)
    assert added.scopes == "system/Patient.read"
    assert _search(_token(added)).status_code == 200


def test_grant_changed_inline_goes_through_the_grant_services(cast):
    issued = _fresh_client()
    grant = issued.grants[0]
    token = _token(grant)
    browser = operator_browser("ops-grant-change")
    url = _client_url(issued.client)
    data = change_form_data(browser.get(url))
    row = inline_row_index(data, "grants", grant.pk)

    bad = data | {f"grants-{row}-scopes": "system/Patient.fly"}
    assert "permissions" in form_errors(browser.post(url, bad))
    assert Grant.objects.get(pk=grant.pk).scopes == grant.scopes

    revoked = data | {f"grants-{row}-status": GrantStatus.REVOKED}
    with mock.patch("tenants.services.grants.grant_revoke", wraps=grant_revoke) as spy:
        assert browser.post(url, revoked).status_code == 302
    spy.assert_called_once()
    assert Grant.objects.get(pk=grant.pk).status == GrantStatus.REVOKED
    assert _search(token).json()["issue"][0]["code"] == "suspended"


def test_grants_are_revoked_never_deleted(cast):
    browser = operator_browser("ops-grant-delete")
    grant = _fresh_client().grants[0]
    assert browser.get(f"/admin/tenants/grant/{grant.pk}/delete/").status_code == 403
    assert b"Delete selected" not in browser.get("/admin/tenants/grant/").content


def test_client_list_status_filter_lists_only_matching_clients(cast):
    partner = f"Filterpartner{uuid.uuid4().hex[:8]}"
    active = client_create(partner_name=partner, tenant_slugs=["provider-a"], scopes="system/*.rs")
    revoked = client_create(partner_name=partner, tenant_slugs=["payer-b"], scopes="system/*.rs")
    client_revoke(client=revoked.client)
    browser = operator_browser("ops-filter")

    unfiltered = browser.get("/admin/tenants/apiclient/?" + urlencode({"q": partner}))
    assert {c.client_id for c in unfiltered.context["cl"].result_list} == {
        active.client.client_id,
        revoked.client.client_id,
    }
    query = urlencode({"q": partner, "status__exact": ClientStatus.REVOKED})
    filtered = browser.get("/admin/tenants/apiclient/?" + query)
    assert [c.client_id for c in filtered.context["cl"].result_list] == [revoked.client.client_id]
    assert active.client.client_id.encode() not in filtered.content


def test_tenant_list_status_filter_lists_only_matching_tenants(cast):
    tenant_set_status(tenant=Tenant.objects.get(pk=cast.tenant_b.pk), status=TenantStatus.SUSPENDED)
    browser = operator_browser("ops-tenant-filter")
    page = browser.get("/admin/tenants/tenant/?status__exact=suspended")
    listed = list(page.context["cl"].result_list)
    assert cast.tenant_b.slug in {tenant.slug for tenant in listed}
    assert cast.tenant_a.slug not in {tenant.slug for tenant in listed}
    assert {tenant.status for tenant in listed} == {"suspended"}


def test_rate_plan_admin_checks_and_saves_through_the_plan_services(cast):
    browser = operator_browser("ops-plan")
    plan = rate_plan_count_only(name=f"plan-{uuid.uuid4().hex[:8]}", description="admin test")
    url = f"/admin/tenants/rateplan/{plan.pk}/change/"
    data = change_form_data(browser.get(url))
    assert "read_per_minute" in form_errors(browser.post(url, data | {"read_per_minute": "-1"}))
    assert RatePlan.objects.get(pk=plan.pk).read_per_minute == plan.read_per_minute
    with mock.patch("tenants.services.rate_plan_update", wraps=rate_plan_update) as spy:
        assert browser.post(url, data | {"read_per_minute": "120"}).status_code == 302
    assert spy.call_args.kwargs == {"plan": mock.ANY, "read_per_minute": 120}
    assert RatePlan.objects.get(pk=plan.pk).read_per_minute == 120


def test_partner_added_in_the_admin_is_created_by_the_partner_service(cast):
    browser = operator_browser("ops-partner")
    name = f"Admin Made {uuid.uuid4().hex[:8]}"
    with mock.patch("tenants.services.partner_create", wraps=partner_create) as spy:
        response = browser.post(
            "/admin/tenants/partner/add/",
            {
                "name": name,
                "contact_email": "ops@example.org",
                "clients-TOTAL_FORMS": "0",
                "clients-INITIAL_FORMS": "0",
            },
        )
    assert response.status_code == 302, form_errors(response)
    spy.assert_called_once()
    assert spy.call_args.kwargs["name"] == name


def test_tenant_added_in_the_admin_is_provisioned_by_the_tenant_services(cast, unique_slug):
    browser = operator_browser("ops-tenant-add")
    form = {
        "slug": unique_slug,
        "name": "Admin Clinic",
        "status": "suspended",
        "isolation_tier": "schema",
        "data_region": "eu-west",
        "plan": rate_plan_get(name="standard").pk,
        "grants-TOTAL_FORMS": "0",
        "grants-INITIAL_FORMS": "0",
    }
    reserved = browser.post("/admin/tenants/tenant/add/", form | {"slug": "admin"})
    assert "reserved" in form_errors(reserved)
    with mock.patch("tenants.services.tenant_create", wraps=tenant_create) as spy:
        response = browser.post("/admin/tenants/tenant/add/", form)
    assert response.status_code == 302, form_errors(response)
    spy.assert_called_once()
    tenant = Tenant.objects.get(slug=unique_slug)
    assert (tenant.status, tenant.data_region, tenant.schema_name) == (
        "suspended",
        "eu-west",
        f"t_{unique_slug}",
    )


def test_grant_added_on_its_own_page_is_created_by_the_grant_service(cast):
    issued = _fresh_client(slug="payer-b")
    browser = operator_browser("ops-grant-page")
    form = {
        "client": issued.client.pk,
        "tenant": cast.tenant_a.pk,
        "scopes": "system/Observation.rs",
        "purposes": '["TREAT"]',
        "plan": issued.grants[0].plan_id,
        "status": GrantStatus.REVOKED,
    }
    with mock.patch("tenants.services.grant_create", wraps=grant_create) as spy:
        assert browser.post("/admin/tenants/grant/add/", form).status_code == 302
    spy.assert_called_once()
    grant = Grant.objects.get(client=issued.client, tenant=cast.tenant_a)
    assert (grant.scopes, grant.purposes, grant.status) == (
        "system/Observation.rs",
        ["TREAT"],
        GrantStatus.REVOKED,
    )
