"""Operators' admin: a superuser runs everything; a staff user sees only what their
permissions allow; actions go through the services."""

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from tenants.models import ApiClient, ClientStatus, Grant, GrantStatus, Tenant, TenantStatus

pytestmark = pytest.mark.django_db


def _staff(username: str, *codenames: str) -> Client:
    user = User.objects.create_user(username, password="pw-" + username, is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    browser = Client()
    browser.force_login(user)
    return browser


@pytest.fixture
def superuser_browser() -> Client:
    user = User.objects.create_superuser("root-op", "root@example.org", "pw")
    browser = Client()
    browser.force_login(user)
    return browser


@pytest.mark.parametrize(
    "page",
    [
        "/admin/tenants/tenant/",
        "/admin/tenants/ratePlan/".lower(),
        "/admin/tenants/partner/",
        "/admin/tenants/apiclient/",
        "/admin/tenants/grant/",
        "/admin/tenants/accesstoken/",
        "/admin/tenants/tenant/?status__exact=active&q=provider",
        "/admin/tenants/apiclient/?status__exact=active&q=Partner",
    ],
)
def test_superuser_sees_every_list_with_filters_and_search(cast, superuser_browser, page):
    assert superuser_browser.get(page).status_code == 200


def test_tenant_page_shows_inline_grants_and_fhir_base(cast, superuser_browser):
    page = superuser_browser.get(f"/admin/tenants/tenant/{cast.tenant_a.pk}/change/")
    assert page.status_code == 200
    assert cast.client_a.client.client_id.encode() in page.content
    assert b"/fhir/provider-a" in page.content


def test_suspend_and_activate_actions(cast, superuser_browser):
    response = superuser_browser.post(
        "/admin/tenants/tenant/",
        {"action": "suspend", "_selected_action": [cast.tenant_b.pk]},
    )
    assert response.status_code == 302
    assert Tenant.objects.get(pk=cast.tenant_b.pk).status == TenantStatus.SUSPENDED
    superuser_browser.post(
        "/admin/tenants/tenant/", {"action": "activate", "_selected_action": [cast.tenant_b.pk]}
    )
    assert Tenant.objects.get(pk=cast.tenant_b.pk).status == TenantStatus.ACTIVE


def test_revoke_client_and_grant_actions(cast, superuser_browser):
    superuser_browser.post(
        "/admin/tenants/apiclient/",
        {"action": "revoke", "_selected_action": [cast.outsider.client.pk]},
    )
    client = ApiClient.objects.get(pk=cast.outsider.client.pk)
    assert client.status == ClientStatus.REVOKED
    assert client.revoked_at is not None
    superuser_browser.post(
        "/admin/tenants/grant/", {"action": "revoke", "_selected_action": [cast.client_b.grant.pk]}
    )
    assert Grant.objects.get(pk=cast.client_b.grant.pk).status == GrantStatus.REVOKED


def test_admin_rejects_an_invalid_scope_on_a_grant(cast, superuser_browser):
    grant = cast.client_a.grant
    response = superuser_browser.post(
        f"/admin/tenants/grant/{grant.pk}/change/",
        {
            "client": grant.client.pk,
            "tenant": grant.tenant.pk,
            "scopes": "system/Patient.fly",
            "purposes": "[]",
            "plan": grant.plan.pk,
            "status": "active",
        },
    )
    assert response.status_code == 200
    assert b"permissions" in response.content
    assert Grant.objects.get(pk=grant.pk).scopes == grant.scopes


def test_view_only_staff_sees_tenants_but_cannot_change_or_act(cast):
    browser = _staff("viewer", "view_tenant")
    listing = browser.get("/admin/tenants/tenant/")
    assert listing.status_code == 200
    assert b"Suspend selected tenants" not in listing.content
    assert browser.get("/admin/tenants/apiclient/").status_code == 403
    assert browser.get("/admin/tenants/grant/").status_code == 403
    browser.post(
        "/admin/tenants/tenant/", {"action": "suspend", "_selected_action": [cast.tenant_a.pk]}
    )
    assert Tenant.objects.get(pk=cast.tenant_a.pk).status == TenantStatus.ACTIVE
    change = browser.post(
        f"/admin/tenants/tenant/{cast.tenant_a.pk}/change/",
        {"name": "Renamed", "status": "suspended"},
    )
    assert change.status_code == 403
    assert Tenant.objects.get(pk=cast.tenant_a.pk).name == "Provider A"


def test_staff_with_change_permission_can_suspend(cast):
    browser = _staff("ops", "view_tenant", "change_tenant")
    assert b"Suspend selected tenants" in browser.get("/admin/tenants/tenant/").content
    browser.post(
        "/admin/tenants/tenant/", {"action": "suspend", "_selected_action": [cast.tenant_a.pk]}
    )
    assert Tenant.objects.get(pk=cast.tenant_a.pk).status == TenantStatus.SUSPENDED


def test_client_secrets_are_never_shown(cast, superuser_browser):
    page = superuser_browser.get(f"/admin/tenants/apiclient/{cast.client_a.client.pk}/change/")
    assert page.status_code == 200
    assert cast.client_a.secret.encode() not in page.content
    assert cast.client_a.client.secrets.get().secret_hash.encode() not in page.content


def test_non_staff_user_is_sent_to_login(cast):
    user = User.objects.create_user("partner-dev", password="pw")
    browser = Client()
    browser.force_login(user)
    assert browser.get("/admin/tenants/tenant/").status_code == 302


def test_tenants_and_clients_are_suspended_or_revoked_never_deleted(cast, superuser_browser):
    listing = superuser_browser.get("/admin/tenants/tenant/")
    assert b"Delete selected" not in listing.content
    assert (
        superuser_browser.get(f"/admin/tenants/tenant/{cast.tenant_a.pk}/delete/").status_code
        == 403
    )
    client_pk = cast.client_a.client.pk
    assert superuser_browser.get(f"/admin/tenants/apiclient/{client_pk}/delete/").status_code == 403
    assert Tenant.objects.filter(pk=cast.tenant_a.pk).exists()
