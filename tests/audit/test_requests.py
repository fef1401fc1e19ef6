"""Every FHIR request leaves one audit event, with the right fields, in the right trail:
allowed, denied by consent, by scope, by the token, invalid, on another tenant's URL,
answered from the cache; a write and its event commit together, and an access whose
event cannot be written is refused (503) with nothing carried out."""

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client

from audit.models import AuditEvent
from fhirplatform.fhir.models import Resource
from fhirplatform.schemas import schema_public, tenant_schema
from tenants.models import Tenant
from tenants.selectors import tenant_fhir_base
from tests.consent.enforcement_support import DENY_ALL, ConsentWorld, consent, observation
from tests.tenants.identity_support import basic


def _events(tenant: Tenant | None, response: Any) -> list[AuditEvent]:
    """The events of the request that got `response`, in a tenant's trail (public: None)."""
    request_id = response["X-Request-ID"]
    if tenant is None:
        schema_public()
        return list(AuditEvent.objects.filter(request_id=request_id))
    with tenant_schema(tenant):
        return list(AuditEvent.objects.filter(request_id=request_id))


def _only(tenant: Tenant | None, response: Any) -> AuditEvent:
    events = _events(tenant, response)
    assert len(events) == 1, events
    return events[0]


@pytest.fixture
def patient_id(world: ConsentWorld, committed: None) -> str:
    world.policy()
    return str(world.created({"resourceType": "Patient", "name": [{"family": "Audited"}]})["id"])


def test_a_read_a_search_and_a_write_are_recorded_with_their_fields(world, patient_id):
    reader = world.client(world.reader)
    created = world.writer.post("Observation", observation(patient_id))
    written = _only(world.tenant, created)
    assert (written.interaction, written.status, written.resource_type) == (
        "create",
        201,
        "Observation",
    )
    obs_id = created.json()["id"]
    assert (written.patients, written.resource_id) == ([patient_id], obs_id)

    read = reader.get(f"Observation/{obs_id}")
    event = _only(world.tenant, read)
    assert (event.interaction, event.status, event.outcome) == ("read", 200, "")
    assert (event.resource_type, event.resource_id, event.patients) == (
        "Observation",
        obs_id,
        [patient_id],
    )
    grant = world.reader
    assert (event.tenant, event.client_id, event.partner) == (
        world.tenant.slug,
        grant.client.client_id,
        grant.client.partner.slug,
    )
    assert event.purpose == "TREAT" and event.scopes == "system/*.rs"
    assert event.consent == "permit" and event.consent_basis.startswith("policy v")
    assert event.source_address == "127.0.0.1" and event.latency_us > 0
    assert event.release == settings.CODE_RELEASE
    assert event.query == f"/fhir/{world.tenant.slug}/Observation/{obs_id}"

    searched = reader.get("Observation", patient=patient_id)
    event = _only(world.tenant, searched)
    assert (event.interaction, event.status, event.patients) == ("search", 200, [patient_id])
    assert event.query.endswith(f"?patient={patient_id}")

    hit = reader.get("Observation", patient=patient_id)
    assert hit["X-Cache"] == "HIT"
    assert _only(world.tenant, hit).patients == [patient_id]  # from the cached entry


def test_refusals_are_recorded_in_the_callers_trail_or_the_public_one(world, patient_id, cast):
    obs_id = world.created(observation(patient_id))["id"]
    world.created(consent(patient_id, DENY_ALL))
    reader = world.client(world.reader)

    denied = reader.get(f"Observation/{obs_id}")
    event = _only(world.tenant, denied)
    assert (denied.status_code, event.status, event.outcome) == (404, 404, "not-found")
    assert event.consent == "deny" and event.consent_basis.startswith("Consent/")

    narrow = world.client(world.reader, scopes="system/Patient.rs")
    refused = narrow.get(f"Observation/{obs_id}")
    assert refused.status_code == 403
    assert _only(world.tenant, refused).outcome.startswith("forbidden")

    invalid = reader.get("Observation", headers={"Prefer": "handling=strict"}, nonsense="1")
    assert invalid.status_code == 400 and _only(world.tenant, invalid).status == 400

    # This tenant's token on another tenant's URL: recorded as ours, never as theirs.
    url = f"/fhir/{cast.tenant_b.slug}/Observation/{obs_id}"
    elsewhere = reader.client.get(url, **reader._headers(None))
    assert elsewhere.status_code == 404
    assert _only(world.tenant, elsewhere).query == url
    assert _events(cast.tenant_b, elsewhere) == []

    anonymous = Client().get(f"/fhir/{world.tenant.slug}/Observation/{obs_id}")
    assert anonymous.status_code == 401
    event = _only(None, anonymous)
    assert (event.tenant, event.client_id, event.status) == ("", "", 401)
    assert _events(world.tenant, anonymous) == []


@pytest.fixture
def audit_refused(world: ConsentWorld, committed: None) -> Iterator[None]:
    """The tenant's trail refuses every insert, as a database that cannot take it would."""
    table = f'"{world.tenant.schema_name}".audit_auditevent'
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE OR REPLACE FUNCTION public.audit_test_refuse() RETURNS trigger "
            "LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'disk full'; END $$"
        )
        cursor.execute(
            f"CREATE TRIGGER audit_test_refuse BEFORE INSERT ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION public.audit_test_refuse()"
        )
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TRIGGER audit_test_refuse ON {table}")
            cursor.execute("DROP FUNCTION public.audit_test_refuse()")


def test_an_access_that_cannot_be_recorded_is_refused_and_changes_nothing(
    world, patient_id, audit_refused
):
    created = world.writer.post("Observation", observation(patient_id))
    assert created.status_code == 503
    assert created.json()["issue"][0]["code"] == "transient"
    with tenant_schema(world.tenant):
        assert not Resource.objects.filter(
            resource_type="Observation", compartment__contains=[patient_id]
        ).exists()

    read = world.client(world.reader).get(f"Patient/{patient_id}")
    assert read.status_code == 503 and b"Audited" not in read.content


def test_token_requests_are_recorded_without_their_secrets(cast):
    grant = cast.client_a
    form = urlencode(
        {
            "grant_type": "client_credentials",
            "scope": "system/*.rs",
            "resource": tenant_fhir_base(cast.tenant_a),
        }
    )

    def ask(secret: str) -> Any:
        return Client().post(
            "/oauth/token",
            form,
            content_type="application/x-www-form-urlencoded",
            HTTP_AUTHORIZATION=basic(grant.client.client_id, secret),
        )

    issued = ask(grant.secret)
    assert issued.status_code == 200, issued.content
    event = _only(cast.tenant_a, issued)
    assert (event.interaction, event.status, event.tenant) == ("token", 200, cast.tenant_a.slug)
    assert event.client_id == grant.client.client_id and event.scopes
    assert event.query == "/oauth/token" and grant.secret not in event.query

    refused = ask("wrong")
    assert refused.status_code == 401
    event = _only(None, refused)
    assert (event.interaction, event.status, event.outcome) == ("token", 401, "invalid_client")
    assert _events(cast.tenant_a, refused) == []


def test_a_bundles_event_names_the_patients_of_its_entries(world, patient_id):
    other = world.created({"resourceType": "Patient", "name": [{"family": "Bundled"}]})["id"]
    obs_id = world.created(observation(patient_id))["id"]
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"Observation/{obs_id}"}},
            {"request": {"method": "GET", "url": f"Observation?patient={patient_id}"}},
            {"resource": observation(other), "request": {"method": "POST", "url": "Observation"}},
        ],
    }
    answered = world.writer.post("", bundle)
    assert answered.status_code == 200, answered.content
    event = _only(world.tenant, answered)
    assert (event.interaction, event.resource_type) == ("batch", "Bundle")
    assert sorted(event.patients) == sorted([patient_id, other])


def test_the_public_endpoints_are_recorded_in_the_public_trail(cast):
    for path in ("metadata", ".well-known/smart-configuration"):
        answered = Client().get(f"/fhir/{cast.tenant_a.slug}/{path}")
        assert answered.status_code == 200
        event = _only(None, answered)
        assert (event.interaction, event.status, event.client_id) == ("capabilities", 200, "")
        assert event.query == f"/fhir/{cast.tenant_a.slug}/{path}"
        assert _events(cast.tenant_a, answered) == []
