"""A real FHIR client library (fhirpy) against the live server on loopback."""

import uuid

import pytest
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import OperationOutcome, ResourceNotFound

from tests.fhir.rest_support import fhir_valid, live_cast, observation, patient

pytestmark = [pytest.mark.live, pytest.mark.django_db]


@pytest.fixture(scope="module")
def live(cast, live_server_url, django_db_blocker):
    yield from live_cast(cast, live_server_url, django_db_blocker)


def _client(live, slug, token):
    return SyncFHIRClient(
        f"{live.url}/fhir/{slug}",
        authorization=f"Bearer {token}",
        extra_headers={"Accept": "application/fhir+json"},
    )


def test_crud_search_and_history_with_fhirpy(cast, live):
    client = _client(live, cast.tenant_a.slug, live.token_a)
    family = f"Fhirpy{uuid.uuid4().hex[:8]}"
    created = client.resource(
        "Patient", **{k: v for k, v in patient(family).items() if k != "resourceType"}
    )
    created.save()
    assert created.id and created["meta"]["versionId"] == "1"
    fhir_valid(created.serialize())

    read = client.reference("Patient", created.id).to_resource()
    assert read["name"][0]["family"] == family

    read["gender"] = "female"
    read.save()
    assert read["meta"]["versionId"] == "2"

    obs = client.resource(
        "Observation",
        **{k: v for k, v in observation(f"Patient/{created.id}").items() if k != "resourceType"},
    )
    obs.save()

    found = client.resources("Patient").search(family=family).fetch()
    assert [p.id for p in found] == [created.id]
    linked = client.resources("Observation").search(patient=created.id).fetch()
    assert [o.id for o in linked] == [obs.id]

    history = client.execute(f"Patient/{created.id}/_history", method="get")
    fhir_valid(history)
    assert [e["response"]["etag"] for e in history["entry"]] == ['W/"2"', 'W/"1"']

    read.delete()
    with pytest.raises((ResourceNotFound, OperationOutcome)):
        client.reference("Patient", created.id).to_resource()

    metadata = client.execute("metadata", method="get")
    assert metadata["resourceType"] == "CapabilityStatement"


def test_invalid_resource_is_an_operation_outcome(cast, live):
    client = _client(live, cast.tenant_a.slug, live.token_a)
    bad = client.resource("Observation", status="whenever", code={"text": "x"})
    with pytest.raises(OperationOutcome) as raised:
        bad.save()
    assert "Observation.status" in str(raised.value)


def test_the_other_tenant_cannot(cast, live):
    client_a = _client(live, cast.tenant_a.slug, live.token_a)
    secret = client_a.resource("Patient", name=[{"family": "Hidden"}])
    secret.save()
    stranger = _client(live, cast.tenant_a.slug, live.token_b)
    with pytest.raises((ResourceNotFound, OperationOutcome)):
        stranger.reference("Patient", secret.id).to_resource()
    own_b = _client(live, cast.tenant_b.slug, live.token_b)
    with pytest.raises(ResourceNotFound):
        own_b.reference("Patient", secret.id).to_resource()
    assert own_b.resources("Patient").search(family="Hidden").fetch() == []
