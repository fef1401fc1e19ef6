"""Operators' actions on governance and tenant data are audit events in the public trail,
with the operator as actor: admin adds, changes and deletes, admin actions (suspend, revoke,
the kill switch), the consent policy page; an action that cannot be recorded is not done."""

from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.test import Client

from audit.models import AuditEvent
from fhirplatform.schemas import schema_public
from tenants.models import RatePlan, Tenant, TenantStatus

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator() -> Client:
    browser = Client()
    browser.force_login(User.objects.create_superuser("gov-op", "op@example.org", "pw"))
    return browser


def _latest(**match: Any) -> AuditEvent:
    schema_public()
    return AuditEvent.objects.filter(interaction="admin", **match).latest("id")


def test_admin_changes_and_actions_are_recorded_with_their_operator(cast, operator):
    plan = RatePlan.objects.get(name="standard")
    page = operator.get(f"/admin/tenants/rateplan/{plan.pk}/change/")
    form = page.context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None}
    data["description"] = "changed by the governance test"
    changed = operator.post(f"/admin/tenants/rateplan/{plan.pk}/change/", data)
    assert changed.status_code == 302, changed.content[:500]
    event = _latest(resource_type="tenants.rateplan")
    assert (event.actor, event.outcome, event.resource_id) == ("gov-op", "changed", str(plan.pk))

    operator.post(
        "/admin/tenants/tenant/", {"action": "suspend", "_selected_action": [cast.tenant_b.pk]}
    )
    event = _latest(resource_type="tenants.tenant")
    assert (event.tenant, event.outcome) == (cast.tenant_b.slug, "changed")
    assert "Suspended" in event.query
    operator.post(
        "/admin/tenants/tenant/", {"action": "activate", "_selected_action": [cast.tenant_b.pk]}
    )

    operator.post(
        "/admin/limits/limiterswitch/", {"action": "turn_limits_off", "_selected_action": [1]}
    )
    assert "Kill switch" in _latest(resource_type="limits.limiterswitch").query
    operator.post(
        "/admin/limits/limiterswitch/", {"action": "turn_limits_on", "_selected_action": [1]}
    )


def test_a_consent_policy_change_is_recorded(cast, operator):
    url = f"/admin/tenants/tenant/{cast.tenant_a.pk}/consent/"
    form = operator.get(url).context["form"]
    data = {k: v for k, v in form.initial.items() if v is not None}
    data |= {"note": "governance test", "explicit_labels": "ETH"}
    saved = operator.post(url, data)
    assert saved.status_code == 302, saved.context["form"].errors
    event = _latest(resource_type="consent.policy")
    assert (event.tenant, event.actor) == (cast.tenant_a.slug, "gov-op")
    assert "governance test" in event.query


@pytest.fixture
def public_trail_refused() -> Iterator[None]:
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE OR REPLACE FUNCTION public.audit_gov_refuse() RETURNS trigger "
            "LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'disk full'; END $$"
        )
        cursor.execute(
            "CREATE TRIGGER audit_gov_refuse BEFORE INSERT ON public.audit_auditevent "
            "FOR EACH ROW EXECUTE FUNCTION public.audit_gov_refuse()"
        )
    yield  # the test's transaction is rolled back: the trigger with it


def test_an_action_that_cannot_be_recorded_is_not_done(cast, operator, public_trail_refused):
    with pytest.raises(Exception, match="disk full"), transaction.atomic():
        operator.post(
            "/admin/tenants/tenant/",
            {"action": "suspend", "_selected_action": [cast.tenant_b.pk]},
        )
    assert Tenant.objects.get(pk=cast.tenant_b.pk).status == TenantStatus.ACTIVE
