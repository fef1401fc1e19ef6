"""Update-as-create: a PUT to an id the tenant does not hold creates the resource with the
client's id, unless the tenant's operators switched it off."""

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from audit.models import AuditEvent
from fhirplatform.fhir.models import Resource, ResourceVersion
from fhirplatform.schemas import tenant_schema
from tenants.services import tenant_update
from tests.fhir.rest_support import (
    FHIR_JSON,
    FhirClient,
    fhir_valid,
    generous_limits,
    live_cast,
    observation,
    patient,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(cast: Any) -> FhirClient:
    generous_limits(cast.tenant_a, cast.tenant_b, cast.client_a.grant, cast.client_b.grant)
    return FhirClient(cast.tenant_a.slug, cast.client_a.token())


@pytest.fixture
def creates_off(cast: Any) -> Iterator[None]:
    tenant_update(tenant=cast.tenant_a, fhir_update_creates=False)
    try:
        yield
    finally:
        tenant_update(tenant=cast.tenant_a, fhir_update_creates=True)


def _client_id() -> str:
    return f"client-{uuid.uuid4().hex[:12]}.v1"


def _stored(tenant: Any, logical_id: str) -> list[Resource]:
    with tenant_schema(tenant):
        return list(Resource.objects.filter(logical_id=logical_id))


def test_a_put_to_a_new_id_creates_it_with_that_id(api, settings):
    logical_id = _client_id()
    response = api.put(f"Patient/{logical_id}", patient(id=logical_id))
    assert response.status_code == 201, response.content
    body = fhir_valid(response.json())
    assert body["id"] == logical_id and body["meta"]["versionId"] == "1"
    base = f"{settings.PUBLIC_BASE_URL}/fhir/provider-a"
    assert response["Location"] == f"{base}/Patient/{logical_id}/_history/1"
    assert response["ETag"] == 'W/"1"' and response["Last-Modified"]
    assert api.get(f"Patient/{logical_id}").json() == body
    again = api.put(f"Patient/{logical_id}", body | {"gender": "female"})
    assert again.status_code == 200 and again.json()["meta"]["versionId"] == "2"
    assert "Location" not in again


def test_a_put_with_an_id_that_is_not_a_fhir_id_is_refused_and_stores_nothing(api, cast):
    for bad in ("x" * 65, "under_score", "ex!cl"):
        response = api.put(f"Patient/{bad}", patient(id=bad))
        assert response.status_code == 400, (bad, response.content)
        issue = fhir_valid(response.json())["issue"][0]
        assert "1-64 of A-Z a-z 0-9 - ." in issue["diagnostics"]
        assert _stored(cast.tenant_a, bad) == []


def test_if_match_on_an_id_that_does_not_exist_is_a_conflict(api, cast):
    logical_id = _client_id()
    response = api.put(f"Patient/{logical_id}", patient(id=logical_id), {"If-Match": 'W/"3"'})
    assert response.status_code == 412
    assert _stored(cast.tenant_a, logical_id) == []


def test_switched_off_a_put_to_a_new_id_is_refused_saying_why(api, cast, creates_off):
    logical_id = _client_id()
    response = api.put(f"Patient/{logical_id}", patient(id=logical_id))
    assert response.status_code == 405
    issue = fhir_valid(response.json())["issue"][0]
    assert issue["code"] == "not-supported"
    assert "update-as-create is off for this tenant" in issue["diagnostics"]
    assert _stored(cast.tenant_a, logical_id) == []
    # An id that exists is still a normal update.
    created = api.post("Patient", patient()).json()
    assert api.put(f"Patient/{created['id']}", created).status_code == 200


def test_a_put_to_a_deleted_resource_brings_it_back_with_the_next_version(api, cast):
    logical_id = _client_id()
    assert api.put(f"Patient/{logical_id}", patient(id=logical_id)).status_code == 201
    assert api.delete(f"Patient/{logical_id}").status_code == 204
    back = api.put(f"Patient/{logical_id}", patient(id=logical_id))
    assert back.status_code == 200 and back.json()["meta"]["versionId"] == "3"
    with tenant_schema(cast.tenant_a):
        methods = list(
            ResourceVersion.objects.filter(logical_id=logical_id)
            .order_by("version_id")
            .values_list("version_id", "method")
        )
    assert methods == [(1, "POST"), (2, "DELETE"), (3, "PUT")]


def test_a_bundle_put_entry_creates_too_and_is_refused_when_switched_off(api, cast):
    logical_id = _client_id()
    entry = {
        "resource": patient(id=logical_id),
        "request": {"method": "PUT", "url": f"Patient/{logical_id}"},
    }
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [entry]}
    answer = api.post("", batch).json()["entry"][0]["response"]
    assert answer["status"] == "201 Created" and answer["etag"] == 'W/"1"'
    tenant_update(tenant=cast.tenant_a, fhir_update_creates=False)
    try:
        other = _client_id()
        entry = {
            "resource": patient(id=other),
            "request": {"method": "PUT", "url": f"Patient/{other}"},
        }
        refused = api.post("", batch | {"entry": [entry]}).json()["entry"][0]["response"]
    finally:
        tenant_update(tenant=cast.tenant_a, fhir_update_creates=True)
    assert refused["status"] == "405"
    assert "update-as-create is off" in refused["outcome"]["issue"][0]["diagnostics"]
    assert _stored(cast.tenant_a, other) == []


def test_the_created_resource_is_audited_as_an_update_naming_its_patient(api, cast):
    logical_id = _client_id()
    response = api.put(
        f"Observation/{logical_id}", observation("Patient/p-audit") | {"id": logical_id}
    )
    assert response.status_code == 201
    with tenant_schema(cast.tenant_a):
        event = AuditEvent.objects.get(request_id=response["X-Request-ID"])
    assert (event.interaction, event.status, event.resource_type) == ("update", 201, "Observation")
    assert (event.resource_id, event.patients) == (logical_id, ["p-audit"])


def test_the_other_tenant_cannot_create_in_ours(api, cast):
    logical_id = _client_id()
    stranger = FhirClient(cast.tenant_a.slug, cast.client_b.token())
    response = stranger.put(f"Patient/{logical_id}", patient(id=logical_id))
    assert response.status_code == 404
    assert _stored(cast.tenant_a, logical_id) == []
    assert _stored(cast.tenant_b, logical_id) == []


@pytest.fixture(scope="module")
def live(cast, live_server_url, django_db_blocker):
    yield from live_cast(cast, live_server_url, django_db_blocker)


@pytest.mark.live
def test_concurrent_puts_of_one_new_id_make_one_resource(cast, live, django_db_blocker):
    logical_id = _client_id()
    url = f"{live.url}/fhir/{cast.tenant_a.slug}/Patient/{logical_id}"
    headers = {"Authorization": f"Bearer {live.token_a}", "Content-Type": FHIR_JSON}
    writers = 6
    start = threading.Barrier(writers)
    statuses: list[int] = []

    def put(number: int) -> None:
        start.wait(timeout=30)
        body = patient(id=logical_id, birthDate=f"19{50 + number}-01-01")
        statuses.append(requests.put(url, json=body, headers=headers, timeout=30).status_code)

    threads = [threading.Thread(target=put, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(statuses) == [200] * (writers - 1) + [201]
    with django_db_blocker.unblock():
        rows = _stored(cast.tenant_a, logical_id)
        with tenant_schema(cast.tenant_a):
            versions = sorted(
                ResourceVersion.objects.filter(logical_id=logical_id).values_list(
                    "version_id", flat=True
                )
            )
    assert len(rows) == 1 and rows[0].version_id == writers
    assert versions == list(range(1, writers + 1))
