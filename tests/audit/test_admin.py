"""The admin's audit trail pages: a tenant's events only, filtered, for operators who may
view audit events; and every view of the trail is itself recorded."""

from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from audit.models import AuditEvent
from audit.services import audit_write
from fhirplatform.schemas import tenant_schema
from tests.audit.test_trail import _record


def _browser(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def auditor(db: Any) -> Client:
    user = User.objects.create_user("trail-auditor", password="pw-x", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename="view_auditevent"))
    return _browser(user)


def test_the_trail_shows_one_tenants_events_filtered_and_records_the_view(auditor, cast):
    mine = audit_write(record=_record(patients=("pat-mine",)), schema=cast.tenant_a.schema_name)
    audit_write(record=_record(patients=("pat-other",)), schema=cast.tenant_a.schema_name)
    audit_write(record=_record(patients=("pat-theirs",)), schema=cast.tenant_b.schema_name)
    url = reverse("admin:tenants_tenant_audit_trail", args=[cast.tenant_a.pk])

    page = auditor.get(url, {"patient": "pat-mine", "interaction": "search"})
    html = page.content.decode()
    assert page.status_code == 200
    assert f"<td>{mine}</td>" in html and "pat-mine" in html
    assert "pat-other" not in html and "pat-theirs" not in html

    with tenant_schema(cast.tenant_a):
        viewed = AuditEvent.objects.filter(interaction="admin").latest("id")
    assert viewed.actor == "trail-auditor" and viewed.resource_type == "AuditEvent"
    assert "patient=pat-mine" in viewed.query

    bad = auditor.get(url, {"since": "2026-02-01 00:00", "until": "2026-01-01 00:00"})
    assert bad.status_code == 200 and "must be after since" in bad.content.decode()


def test_the_trail_is_for_those_who_may_view_audit_events(db, cast):
    staff = User.objects.create_user("trail-none", password="pw-x", is_staff=True)
    url = reverse("admin:tenants_tenant_audit_trail", args=[cast.tenant_a.pk])
    assert _browser(staff).get(url).status_code == 403
    assert Client().get(url).status_code == 302  # to the login page
