"""The demo's Consent: with data, `seed_demo` has the provider tenant's first patient opt
out of the analytics client, and says so; the FHIR API enforces it and the demo's policy
test passes against the live engine."""

import json
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command

from consent.governance import policy_tests_run
from fhirplatform.demo import CONSENT_TENANT, CONSENT_TEST_NAME, OPTED_OUT_CLIENT
from fhirplatform.fhir.models import Resource
from fhirplatform.schemas import tenant_schema
from tenants.models import Grant, Tenant
from tenants.scopes import scopes_parse
from tenants.services import token_issue
from tests.fhir.rest_support import FhirClient, generous_limits


def _seeded(settings: Any, tmp_path: Any) -> dict[str, Any]:
    settings.DEMO_CREDENTIALS_FILE = str(tmp_path / "demo.json")
    out = StringIO()
    call_command("seed_demo", "--json", "--patients", "2", "--observations", "1", stdout=out)
    seeded: dict[str, Any] = json.loads(out.getvalue())
    return seeded


def _client(tenant: Tenant, client_id: str) -> FhirClient:
    grant = Grant.objects.get(tenant=tenant, client__client_id=client_id)
    generous_limits(tenant, grant)
    issued = token_issue(
        grant=grant, scopes=scopes_parse(grant.scopes), auth_method="test", purpose="TREAT"
    )
    return FhirClient(tenant.slug, issued.access_token)


@pytest.mark.usefixtures("committed")
def test_the_demo_patient_who_opted_out_is_hidden_from_analytics_only(settings, tmp_path):
    first = _seeded(settings, tmp_path)
    again = _seeded(settings, tmp_path)  # idempotent: still one Consent, one test
    clients = {c["name"]: c["client_id"] for c in again["clients"]}
    analytics = next(cid for name, cid in clients.items() if "Analytics" in name)
    coordination = next(cid for name, cid in clients.items() if "Coordination" in name)
    assert first["consent"] == again["consent"]
    assert OPTED_OUT_CLIENT in again["consent"] and analytics in again["consent"]

    tenant = Tenant.objects.get(slug=CONSENT_TENANT)
    with tenant_schema(tenant):
        assert Resource.objects.filter(resource_type="Consent", deleted=False).count() == 1
        patient_id = again["consent"].split()[0].removeprefix("Patient/")
        observation = Resource.objects.get(
            resource_type="Observation", compartment__contains=[patient_id], deleted=False
        )
    path = f"Observation/{observation.logical_id}"
    assert _client(tenant, analytics).get(path).status_code == 404
    assert _client(tenant, coordination).get(path).status_code == 200

    run = policy_tests_run(tenant=tenant)
    demo_tests = [r for r in run.results if r.test.name == CONSENT_TEST_NAME]
    assert len(demo_tests) == 1 and demo_tests[0].passed
