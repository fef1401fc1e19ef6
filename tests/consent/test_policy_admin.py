"""The operators' consent policy pages in the admin, driven with Django's test client:
view, edit (a new version), bad input (a form error, nothing stored), policy tests (add,
run, delete), permissions, and the other tenant's pages."""

from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from consent.models import ConsentPolicyVersion, PolicyTest
from consent.selectors import policy_current
from consent.services import policy_test_create
from fhirplatform.schemas import tenant_schema
from tenants.models import Tenant

pytestmark = pytest.mark.django_db


def browser(username: str, *codenames: str, staff: bool = True) -> Client:
    """A staff operator holding these consent permissions only (not a superuser)."""
    user = User.objects.create_user(username, password="pw-" + username, is_staff=staff)
    permissions = Permission.objects.filter(
        content_type__app_label="consent", codename__in=codenames
    )
    assert permissions.count() == len(codenames), "consent permissions are missing"
    user.user_permissions.set(permissions)
    client = Client()
    client.force_login(user)
    return client


ALL = (
    "view_consentpolicyversion",
    "add_consentpolicyversion",
    "view_policytest",
    "add_policytest",
    "delete_policytest",
)


@pytest.fixture
def officer() -> Client:
    return browser("privacy-officer", *ALL)


def url(tenant: Tenant, rest: str = "") -> str:
    return f"/admin/tenants/tenant/{tenant.pk}/consent/{rest}"


def policy_post(**changes: Any) -> dict[str, Any]:
    """The edit form as a new tenant shows it, with `changes`."""
    data = {
        "default": "permit",
        "partner_defaults": "",
        "client_defaults": "",
        "allowed_purposes": "",
        "explicit_types": "",
        "explicit_labels": "",
        "denied_answer": "not-found",
        "note": "",
    }
    return data | changes


def versions(tenant: Tenant) -> list[ConsentPolicyVersion]:
    with tenant_schema(tenant):
        return list(ConsentPolicyVersion.objects.order_by("version"))


def test_the_tenant_change_page_links_to_its_consent_policy(cast):
    root = User.objects.create_superuser("root-op", "root@example.org", "pw")
    client = Client()
    client.force_login(root)
    page = client.get(f"/admin/tenants/tenant/{cast.tenant_a.pk}/change/")
    assert page.status_code == 200
    assert url(cast.tenant_a).encode() in page.content


def test_a_new_tenant_shows_version_0_permit(cast, officer):
    page = officer.get(url(cast.tenant_a))
    assert page.status_code == 200
    assert page.context["page"].policy.version == 0
    assert b"In force: version 0" in page.content
    assert b"Change the policy (saved as version 1)" in page.content


def test_saving_the_form_stores_a_new_version_by_the_operator(cast, officer):
    client_id = cast.client_a.client.client_id
    partner = cast.client_a.client.partner.slug
    response = officer.post(
        url(cast.tenant_a),
        policy_post(
            default="deny",
            partner_defaults=f"{partner}: permit",
            client_defaults=f"{client_id} = deny\n",
            allowed_purposes="TREAT, HPAYMT",
            explicit_types="Observation Condition",
            explicit_labels="R ETH PSY",
            denied_answer="forbidden",
            note="lock it down",
        ),
    )
    assert response.status_code == 302, response.content[:2000]
    (stored,) = versions(cast.tenant_a)
    assert (stored.version, stored.created_by, stored.note) == (
        1,
        "privacy-officer",
        "lock it down",
    )
    assert stored.partner_defaults == {partner: "permit"}
    assert stored.client_defaults == {client_id: "deny"}
    assert stored.explicit_labels == ["ETH", "PSY", "R"]
    assert stored.denied_answer == "forbidden"

    page = officer.get(url(cast.tenant_a))
    assert b"In force: version 1" in page.content
    assert b"Saved as consent policy version 1." in page.content
    history = page.content.decode()
    assert "lock it down" in history and "explicit_labels: none &rarr; ETH PSY R" in history
    # The form shows the policy in force, ready for the next change.
    assert page.context["form"].initial["explicit_labels"] == "ETH PSY R"

    second = officer.post(url(cast.tenant_a), policy_post(default="permit", note="reopen"))
    assert second.status_code == 302
    assert [row.version for row in versions(cast.tenant_a)] == [1, 2]


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"explicit_types": "Observatoin"}, "explicit_types", "not R4 resource types"),
        ({"client_defaults": "ghost: deny"}, "client_defaults", "no client with a grant"),
        ({"partner_defaults": "nobody: deny"}, "partner_defaults", "no partner has the slug"),
        ({"partner_defaults": "just words here"}, "partner_defaults", "one override a line"),
        ({"client_defaults": "x: sometimes"}, "client_defaults", "is not one of"),
        ({"default": "maybe"}, "default", "Select a valid choice"),
        ({"note": ""}, "note", "This field is required"),
        ({"default": "permit"}, None, "nothing changed"),
    ],
)
def test_bad_input_is_a_form_error_and_stores_nothing(cast, officer, changes, field, message):
    response = officer.post(url(cast.tenant_a), policy_post(**{"note": "why", **changes}))
    assert response.status_code == 200
    form = response.context["form"]
    errors = form.errors.get(field or "__all__")
    assert errors and message in " ".join(errors), form.errors
    assert message.encode() in response.content.replace(b"&#x27;", b"'")
    assert versions(cast.tenant_a) == []


def test_policy_tests_are_added_run_and_deleted_from_the_page(cast, officer):
    client_id = cast.client_a.client.client_id
    add = officer.post(
        url(cast.tenant_a, "tests/"),
        {
            "name": "deny consent -> deny",
            "client_id": client_id,
            "purpose": "TREAT",
            "resource_type": "Observation",
            "security_labels": "",
            "patient_id": "",
            "consents": '[{"resourceType": "Consent", "status": "active", '
            '"scope": {"coding": [{"system": '
            '"http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]}, '
            '"category": [{"text": "privacy"}], "provision": {"type": "deny"}}]',
            "expected": "deny",
        },
    )
    assert add.status_code == 302, add.content[:2000]
    officer.post(
        url(cast.tenant_a, "tests/"),
        {
            "name": "expects deny, gets permit",
            "client_id": client_id,
            "resource_type": "Patient",
            "expected": "deny",
        },
    )
    page = officer.get(url(cast.tenant_a))
    assert b"1 stated Consent(s)" in page.content and b"no patient compartment" in page.content

    run = officer.get(url(cast.tenant_a, "run/"))
    assert run.status_code == 200
    text = run.content.decode()
    assert "1 of 2 policy tests fail." in text
    assert "<td>PASS</td>" in text and "<strong>FAIL</strong>" in text
    assert "consent-deny" in text
    assert run.context["run"].uncovered == ["consent-permit"]

    with tenant_schema(cast.tenant_a):
        failing = PolicyTest.objects.get(name="expects deny, gets permit")
    deleted = officer.post(url(cast.tenant_a, f"tests/{failing.pk}/delete/"))
    assert deleted.status_code == 302
    assert b"all 1 policy tests pass." in officer.get(url(cast.tenant_a, "run/")).content


def test_a_bad_policy_test_is_a_form_error(cast, officer):
    response = officer.post(
        url(cast.tenant_a, "tests/"),
        {
            "name": "x",
            "client_id": "ghost",
            "resource_type": "Nope",
            "consents": "[{",
            "expected": "deny",
        },
    )
    assert response.status_code == 200
    errors = response.context["test_form"].errors
    assert set(errors) == {"consents"}  # the form's own parse comes first
    response = officer.post(
        url(cast.tenant_a, "tests/"),
        {"name": "x", "client_id": "ghost", "resource_type": "Nope", "expected": "deny"},
    )
    assert set(response.context["test_form"].errors) == {"client_id", "resource_type"}
    with tenant_schema(cast.tenant_a):
        assert not PolicyTest.objects.exists()


def test_permissions_are_checked_per_action(cast):
    reader = browser("reader", "view_consentpolicyversion")
    page = reader.get(url(cast.tenant_a))
    assert page.status_code == 200
    assert b"policy-form" not in page.content and b"policy-test-form" not in page.content
    assert reader.post(url(cast.tenant_a), policy_post(default="deny", note="x")).status_code == 403
    assert reader.get(url(cast.tenant_a, "run/")).status_code == 403
    assert reader.post(url(cast.tenant_a, "tests/"), {"name": "x"}).status_code == 403
    assert versions(cast.tenant_a) == []

    assert browser("nobody").get(url(cast.tenant_a)).status_code == 403
    not_staff = browser("customer", *ALL, staff=False).get(url(cast.tenant_a))
    assert not_staff.status_code == 302 and "/admin/login/" in not_staff["Location"]
    assert Client().get(url(cast.tenant_a)).status_code == 302


def test_the_other_tenants_pages_show_and_change_only_their_own(cast, officer):
    officer.post(url(cast.tenant_a), policy_post(default="deny", note="a only"))
    test = policy_test_create(
        tenant=cast.tenant_a,
        by="ops",
        name="a's test",
        client_id=cast.client_a.client.client_id,
        resource_type="Patient",
        expected="deny",
    )

    page_b = officer.get(url(cast.tenant_b))
    assert page_b.context["page"].policy.version == 0
    assert page_b.context["page"].history == [] and page_b.context["page"].tests == []
    # Deleting A's test through B's page finds no such test in B.
    officer.post(url(cast.tenant_b, f"tests/{test.pk}/delete/"))
    with tenant_schema(cast.tenant_a):
        assert PolicyTest.objects.filter(pk=test.pk).exists()
        assert policy_current().version == 1
    assert officer.get(url(cast.tenant_b, "run/")).context["run"].results == []
    assert officer.get("/admin/tenants/tenant/999999/consent/").status_code == 404
