"""The demo's data-dependent parts. Its Consent: with data, `seed_demo` has the provider
tenant's first patient opt out of the analytics client, and says so; the FHIR API enforces
it and the demo's policy test passes against the live engine. Its Groups: every demo
tenant has the demo cohorts, person Groups of its own seeded Patients.

The tests share one credentials file: a fresh one makes fresh clients, and so another
opt-out Consent in the demo tenant, which the Consent test counts."""

import json
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from consent.governance import policy_tests_run
from fhirplatform.demo import (
    CONSENT_TENANT,
    CONSENT_TEST_NAME,
    DEMO_GROUP_SYSTEM,
    DEMO_GROUPS,
    DEMO_TENANTS,
    OPTED_OUT_CLIENT,
)
from fhirplatform.fhir.models import Resource
from fhirplatform.schemas import tenant_schema
from tenants.models import Grant, Tenant
from tenants.scopes import scopes_parse
from tenants.services import token_issue
from tests.fhir.rest_support import FhirClient, generous_limits


@pytest.fixture(scope="module")
def credentials_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo") / "demo.json"


def _seeded(settings: Any, credentials_file: Path) -> dict[str, Any]:
    settings.DEMO_CREDENTIALS_FILE = str(credentials_file)
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
def test_the_demo_patient_who_opted_out_is_hidden_from_analytics_only(settings, credentials_file):
    first = _seeded(settings, credentials_file)
    again = _seeded(settings, credentials_file)  # idempotent: still one Consent, one test
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


@pytest.mark.usefixtures("committed")
def test_every_demo_tenant_has_the_demo_groups_of_its_own_patients(settings, credentials_file):
    first = _seeded(settings, credentials_file)
    again = _seeded(settings, credentials_file)  # idempotent: the same Groups, none added
    assert first["groups"] == again["groups"]
    assert set(again["groups"]) == {slug for slug, _, _ in DEMO_TENANTS}
    for slug, reported in again["groups"].items():
        with tenant_schema(Tenant.objects.get(slug=slug)):
            patients = set(
                Resource.objects.filter(resource_type="Patient", deleted=False).values_list(
                    "logical_id", flat=True
                )
            )
            groups = list(Resource.objects.filter(resource_type="Group", deleted=False))
        assert sorted(f"Group/{group.logical_id}" for group in groups) == sorted(
            line.split()[0] for line in reported
        )
        identifiers = [group.content["identifier"] for group in groups]
        assert sorted(identifiers, key=str) == sorted(
            ([{"system": DEMO_GROUP_SYSTEM, "value": demo.key}] for demo in DEMO_GROUPS), key=str
        )
        for group in groups:
            content = group.content
            assert (content["type"], content["actual"]) == ("person", True)
            assert content["name"] in {demo.name for demo in DEMO_GROUPS}
            references = [member["entity"]["reference"] for member in content["member"]]
            assert references and len(set(references)) == len(references)
            assert content["quantity"] == len(references)
            # Every member resolves to a Patient seeded in this same tenant.
            assert all(reference.startswith("Patient/") for reference in references)
            assert {reference.removeprefix("Patient/") for reference in references} <= patients
