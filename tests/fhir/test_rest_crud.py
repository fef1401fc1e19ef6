"""Create, read, vread, conditional read, update, patch and delete through the pipeline."""

import json
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from django.utils.http import http_date

from fhirplatform.fhir.models import Resource, ResourceVersion
from fhirplatform.schemas import tenant_schema
from tests.fhir.rest_support import (
    FhirClient,
    fhir_valid,
    generous_limits,
    observation,
    patient,
    stored_tagged,
    tagged,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(cast):
    generous_limits(cast.tenant_a, cast.tenant_b, cast.client_a.grant, cast.client_b.grant)
    return FhirClient(cast.tenant_a.slug, cast.client_a.token())


def _create(api, body=None):
    response = api.post("Patient", body or patient())
    assert response.status_code == 201, response.content
    return response.json()


def test_create_assigns_uuid_and_metadata(api, settings):
    response = api.post("Patient", patient(id="client-chosen"))
    assert response.status_code == 201
    body = fhir_valid(response.json())
    assert uuid.UUID(body["id"]).version == 4  # server-assigned, the client's id ignored
    assert body["meta"]["versionId"] == "1"
    assert body["meta"]["lastUpdated"].endswith("Z")
    assert body["meta"]["source"].startswith("urn:fhirplatform:client:")
    assert response["ETag"] == 'W/"1"'
    assert response["Last-Modified"]
    base = f"{settings.PUBLIC_BASE_URL}/fhir/provider-a"
    assert response["Location"] == f"{base}/Patient/{body['id']}/_history/1"
    assert response["Content-Type"].startswith("application/fhir+json")


def test_read_and_vread(api):
    created = _create(api)
    read = api.get(f"Patient/{created['id']}")
    assert read.status_code == 200
    assert fhir_valid(read.json()) == created
    assert read["ETag"] == 'W/"1"'
    vread = api.get(f"Patient/{created['id']}/_history/1")
    assert vread.status_code == 200 and vread.json() == created
    assert api.get(f"Patient/{created['id']}/_history/2").status_code == 404
    missing = api.get(f"Patient/{uuid.uuid4()}")
    assert missing.status_code == 404
    assert fhir_valid(missing.json())["issue"][0]["code"] == "not-found"


def test_conditional_read(api):
    created = _create(api)
    path = f"Patient/{created['id']}"
    assert api.get(path, headers={"If-None-Match": 'W/"1"'}).status_code == 304
    assert api.get(path, headers={"If-None-Match": 'W/"7"'}).status_code == 200
    later = http_date((timezone.now() + timedelta(minutes=5)).timestamp())
    earlier = http_date((timezone.now() - timedelta(days=1)).timestamp())
    assert api.get(path, headers={"If-Modified-Since": later}).status_code == 304
    assert api.get(path, headers={"If-Modified-Since": earlier}).status_code == 200


def test_update_and_if_match(api, cast):
    created = _create(api)
    path = f"Patient/{created['id']}"
    changed = created | {"gender": "female"}
    updated = api.put(path, changed, headers={"If-Match": 'W/"1"'})
    assert updated.status_code == 200, updated.content
    assert fhir_valid(updated.json())["meta"]["versionId"] == "2"
    assert updated["ETag"] == 'W/"2"'
    stale = api.put(path, created | {"gender": "other"}, headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert fhir_valid(stale.json())["issue"][0]["code"] == "conflict"
    assert api.get(path).json()["gender"] == "female"  # the stale write changed nothing
    assert api.get(f"{path}/_history/1").json()["gender"] == "male"


def test_update_refuses_mismatched_or_missing_ids(api):
    created = _create(api)
    path = f"Patient/{created['id']}"
    wrong_id = api.put(path, created | {"id": "another"})
    assert wrong_id.status_code == 400
    assert wrong_id.json()["issue"][0]["expression"] == ["Patient.id"]
    no_id = {k: v for k, v in created.items() if k != "id"}
    assert api.put(path, no_id).status_code == 400
    wrong_type = api.put(path, created | {"resourceType": "Practitioner"})
    assert wrong_type.status_code == 400
    unknown = str(uuid.uuid4())
    # An unknown id is update-as-create (tests/fhir/test_update_create.py).
    assert api.put(f"Patient/{unknown}", created | {"id": unknown}).status_code == 201
    assert api.get(path).json()["meta"]["versionId"] == "1"


def test_patch_json_patch(api):
    created = _create(api)
    path = f"Patient/{created['id']}"
    ops = [
        {"op": "replace", "path": "/gender", "value": "female"},
        {"op": "add", "path": "/active", "value": True},
    ]
    patched = api.send(
        "PATCH",
        path,
        ops,
        content_type="application/json-patch+json",
        headers={"If-Match": 'W/"1"'},
    )
    assert patched.status_code == 200, patched.content
    body = fhir_valid(patched.json())
    assert body["gender"] == "female" and body["active"] is True
    assert body["meta"]["versionId"] == "2"
    failing = [{"op": "test", "path": "/gender", "value": "male"}]
    assert (
        api.send("PATCH", path, failing, content_type="application/json-patch+json").status_code
        == 422
    )
    invalid = [{"op": "replace", "path": "/gender", "value": "banana"}]
    rejected = api.send("PATCH", path, invalid, content_type="application/json-patch+json")
    assert rejected.status_code == 422
    assert rejected.json()["issue"][0]["expression"] == ["Patient.gender"]
    renaming = [{"op": "replace", "path": "/id", "value": "other"}]
    assert (
        api.send("PATCH", path, renaming, content_type="application/json-patch+json").status_code
        == 400
    )
    assert api.send("PATCH", path, ops, content_type="application/fhir+json").status_code == 415
    assert api.get(path).json()["meta"]["versionId"] == "2"


def test_delete_keeps_history(api, cast):
    created = _create(api)
    path = f"Patient/{created['id']}"
    assert api.delete(path, headers={"If-Match": 'W/"9"'}).status_code == 412
    deleted = api.delete(path)
    assert deleted.status_code == 204
    gone = api.get(path)
    assert gone.status_code == 410
    assert fhir_valid(gone.json())["issue"][0]["code"] == "deleted"
    assert api.get(f"{path}/_history/1").status_code == 200
    assert api.get(f"{path}/_history/2").status_code == 410
    assert api.delete(path).status_code == 204  # idempotent: no third version
    with tenant_schema(cast.tenant_a):
        assert ResourceVersion.objects.filter(logical_id=created["id"]).count() == 2
    revived = api.put(path, created)
    assert revived.status_code == 200
    assert revived.json()["meta"]["versionId"] == "3"


@pytest.mark.parametrize(
    ("body", "status", "expression"),
    [
        ({"resourceType": "Patient", "gender": "banana"}, 422, "Patient.gender"),
        ({"resourceType": "Patient", "favouriteColour": "blue"}, 422, "Patient.favouriteColour"),
        ({"resourceType": "Patient", "birthDate": "25/12/1974"}, 422, "Patient.birthDate"),
        ({"resourceType": "Patient", "name": [{"given": [7]}]}, 422, "Patient.name[0].given[0]"),
        (
            {"resourceType": "Patient", "generalPractitioner": [{"reference": "not a ref"}]},
            422,
            "Patient.generalPractitioner[0].reference",
        ),
        (
            {"resourceType": "Patient", "managingOrganization": {"reference": "Banana/1"}},
            422,
            "Patient.managingOrganization.reference",
        ),
        (
            {"resourceType": "Observation", "status": "final", "code": {"text": "x"}},
            400,
            "Patient.resourceType",
        ),
        (
            {"resourceType": "Patient", "text": {"status": "odd", "div": "<div>x</div>"}},
            422,
            "Patient.text.status",
        ),
    ],
)
def test_invalid_payloads_are_refused_and_nothing_is_stored(api, cast, body, status, expression):
    marker = uuid.uuid4().hex
    response = api.post("Patient", tagged(body, marker))
    assert response.status_code == status, response.content
    outcome = fhir_valid(response.json())
    assert expression in [e for issue in outcome["issue"] for e in issue.get("expression", [])]
    assert stored_tagged(cast.tenant_a, marker) == []
    # The same marker on a valid body is found: the check above can see a stored row.
    assert api.post("Patient", tagged(patient(), marker)).status_code == 201
    assert len(stored_tagged(cast.tenant_a, marker)) == 1


def test_required_status_codes_of_core_types(api):
    bad = observation("Patient/x") | {"status": "done"}
    response = api.post("Observation", bad)
    assert response.status_code == 422
    assert response.json()["issue"][0]["expression"] == ["Observation.status"]
    missing = {k: v for k, v in observation("Patient/x").items() if k != "status"}
    response = api.post("Observation", missing)
    assert response.status_code == 422
    assert response.json()["issue"][0]["code"] == "required"
    condition = {
        "resourceType": "Condition",
        "subject": {"reference": "Patient/x"},
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": "sort-of",
                }
            ]
        },
    }
    response = api.post("Condition", condition)
    assert response.status_code == 422
    assert response.json()["issue"][0]["expression"] == ["Condition.clinicalStatus.coding[0].code"]


def test_malformed_json_and_payload_limit(api, cast, settings):
    assert api.post("Patient", "{not json").status_code == 400
    assert api.post("Patient", "[1, 2]").status_code == 400
    settings.FHIR_MAX_PAYLOAD_BYTES = 2048
    marker = uuid.uuid4().hex
    big = patient(text={"status": "generated", "div": f"<div>{'x' * 4000}</div>"})
    response = api.post("Patient", tagged(big, marker))
    assert response.status_code == 413
    assert fhir_valid(response.json())["issue"][0]["code"] == "too-costly"
    assert stored_tagged(cast.tenant_a, marker) == []


def test_every_r4_type_is_accepted_including_r4_only_types(api):
    medicinal = {
        "resourceType": "MedicinalProduct",
        "name": [{"productName": "Aspirin 100mg"}],
        "identifier": [{"system": "urn:oid:1.2.3", "value": "A1"}],
    }
    response = api.post("MedicinalProduct", medicinal)
    assert response.status_code == 201, response.content
    assert response.json()["meta"]["versionId"] == "1"
    bad = medicinal | {"Bad-Element": 1}
    assert api.post("MedicinalProduct", bad).status_code == 422
    bad_meta = medicinal | {"meta": {"lastUpdated": "yesterday"}}
    assert api.post("MedicinalProduct", bad_meta).status_code == 422
    assert api.post("Banana", {"resourceType": "Banana"}).status_code == 404


def test_prefer_return(api):
    minimal = api.post("Patient", patient(), headers={"Prefer": "return=minimal"})
    assert minimal.status_code == 201 and minimal.content == b""
    assert minimal["Location"] and minimal["ETag"] == 'W/"1"'
    outcome = api.post("Patient", patient(), headers={"Prefer": "return=OperationOutcome"})
    assert fhir_valid(outcome.json())["resourceType"] == "OperationOutcome"


def test_scopes_are_enforced(cast):
    reader = FhirClient(cast.tenant_a.slug, cast.client_a.token("system/Patient.rs"))
    assert reader.post("Patient", patient()).status_code == 403
    assert reader.post("Observation", observation("Patient/x")).status_code == 403
    writer = FhirClient(cast.tenant_a.slug, cast.client_a.token())
    created = writer.post("Patient", patient()).json()
    assert reader.get(f"Patient/{created['id']}").status_code == 200
    assert reader.delete(f"Patient/{created['id']}").status_code == 403


def test_the_other_tenant_cannot(api, cast):
    created = _create(api)
    path = f"Patient/{created['id']}"
    token_b = cast.client_b.token()
    # Tenant B's token on tenant A's URL: the shared 404, whatever the interaction.
    stranger = FhirClient(cast.tenant_a.slug, token_b)
    for response in (
        stranger.get(path),
        stranger.get(f"{path}/_history/1"),
        stranger.put(path, created),
        stranger.delete(path),
        stranger.post("Patient", patient()),
    ):
        assert response.status_code == 404
        assert fhir_valid(response.json())["issue"][0]["code"] == "not-found"
    outsider = FhirClient(cast.tenant_a.slug, cast.outsider.token())
    assert outsider.get(path).status_code == 404
    # On its own tenant, B does not find A's resource either.
    own = FhirClient(cast.tenant_b.slug, token_b)
    assert own.get(path).status_code == 404
    # Update-as-create: B's PUT makes B's own resource with that id; A's is untouched.
    assert own.put(path, created).status_code == 201
    assert api.get(path).json()["meta"]["versionId"] == "1"
    with tenant_schema(cast.tenant_b):
        assert Resource.objects.get(logical_id=created["id"]).version_id == 1


def test_unauthenticated_is_refused(cast):
    anonymous = FhirClient(cast.tenant_a.slug, "not-a-token")
    response = anonymous.get(f"Patient/{uuid.uuid4()}")
    assert response.status_code == 401
    assert json.loads(response.content)["resourceType"] == "OperationOutcome"


def test_search_endpoints_get_post_and_strict_handling(api, cast):
    family = f"Srch{uuid.uuid4().hex[:8]}"
    created = _create(api, patient(family))
    found = api.get("Patient", family=family)
    assert found.status_code == 200
    bundle = fhir_valid(found.json())
    assert [e["resource"]["id"] for e in bundle["entry"]] == [created["id"]]
    posted = api.send(
        "POST",
        "Patient/_search",
        f"family={family}",
        content_type="application/x-www-form-urlencoded",
    )
    assert posted.status_code == 200, posted.content
    assert [e["resource"]["id"] for e in posted.json()["entry"]] == [created["id"]]
    json_body = api.post("Patient/_search", {"family": family})
    assert json_body.status_code == 415
    strict = api.get("Patient", headers={"Prefer": "handling=strict"}, bogus="1")
    assert strict.status_code == 400
    assert fhir_valid(strict.json())["resourceType"] == "OperationOutcome"
    lenient = api.get("Patient", family=family, bogus="1")
    assert lenient.status_code == 200
    # The other tenant's search does not see it.
    other = FhirClient(cast.tenant_b.slug, cast.client_b.token())
    assert other.get("Patient", family=family).json().get("entry", []) == []


def test_conditional_create(api):
    marker = uuid.uuid4().hex
    body = patient(marker)
    header = {"If-None-Exist": f"identifier=urn:oid:1.2.36.146.595.217.0.1|{marker}"}
    first = api.post("Patient", body, headers=header)
    assert first.status_code == 201
    second = api.post("Patient", body, headers=header)
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    api.post("Patient", body)  # a second match, made without the condition
    assert api.post("Patient", body, headers=header).status_code == 412
