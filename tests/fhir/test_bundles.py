"""Batch and transaction Bundles POSTed to the base."""

import base64
import json
import uuid

import pytest
from django.db import connection

from fhirplatform.fhir import bundles
from fhirplatform.fhir.models import Resource
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


def _count(tenant):
    with tenant_schema(tenant):
        return Resource.objects.count()


def _transaction(entries, kind="transaction"):
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def _post_entry(resource, full_url=None):
    entry = {"resource": resource, "request": {"method": "POST", "url": resource["resourceType"]}}
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def test_transaction_resolves_urn_uuid_references(api):
    patient_urn = f"urn:uuid:{uuid.uuid4()}"
    encounter_urn = f"urn:uuid:{uuid.uuid4()}"
    encounter = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": patient_urn},
    }
    obs = observation(patient_urn) | {"encounter": {"reference": encounter_urn}}
    bundle = _transaction(
        [
            _post_entry(obs),  # refers forward: resolved even before its target's entry
            _post_entry(encounter, encounter_urn),
            _post_entry(patient(), patient_urn),
        ]
    )
    response = api.post("", bundle)
    assert response.status_code == 200, response.content
    result = fhir_valid(response.json())
    assert result["type"] == "transaction-response"
    statuses = [entry["response"]["status"] for entry in result["entry"]]
    assert statuses == ["201 Created"] * 3
    locations = [entry["response"]["location"] for entry in result["entry"]]
    assert all(loc.startswith("http") and "/_history/1" in loc for loc in locations)
    patient_id = locations[2].split("/")[-3]
    encounter_id = locations[1].split("/")[-3]
    stored_obs = api.get("/".join(locations[0].split("/")[-4:-2])).json()
    assert stored_obs["subject"]["reference"] == f"Patient/{patient_id}"
    assert stored_obs["encounter"]["reference"] == f"Encounter/{encounter_id}"
    assert api.get(f"Patient/{patient_id}").status_code == 200


def test_transaction_is_all_or_nothing(api, cast):
    before = _count(cast.tenant_a)
    existing = api.post("Patient", patient()).json()
    bundle = _transaction(
        [
            _post_entry(patient("Fine")),
            {
                "resource": existing | {"gender": "female"},
                "request": {"method": "PUT", "url": f"Patient/{existing['id']}"},
            },
            _post_entry({"resourceType": "Observation", "status": "maybe", "code": {"text": "x"}}),
        ]
    )
    response = api.post("", bundle)
    assert response.status_code == 422
    outcome = fhir_valid(response.json())
    assert outcome["issue"][0]["diagnostics"].startswith("Bundle.entry[2]")
    assert outcome["issue"][0]["expression"] == ["Bundle.entry[2].resource.status"]
    assert _count(cast.tenant_a) == before + 1  # only the patient made before the Bundle
    assert api.get(f"Patient/{existing['id']}").json()["gender"] == "male"


def test_transaction_update_patch_delete_and_read(api):
    first = api.post("Patient", patient("One")).json()
    second = api.post("Patient", patient("Two")).json()
    ops = [{"op": "replace", "path": "/gender", "value": "other"}]
    binary = {
        "resourceType": "Binary",
        "contentType": "application/json-patch+json",
        "data": base64.b64encode(json.dumps(ops).encode()).decode(),
    }
    bundle = _transaction(
        [
            {"request": {"method": "GET", "url": f"Patient/{first['id']}"}},
            {
                "resource": binary,
                "request": {"method": "PATCH", "url": f"Patient/{first['id']}", "ifMatch": 'W/"1"'},
            },
            {"request": {"method": "DELETE", "url": f"Patient/{second['id']}"}},
        ]
    )
    response = api.post("", bundle, headers={"Prefer": "return=representation"})
    assert response.status_code == 200, response.content
    entries = fhir_valid(response.json())["entry"]
    # GET runs last, so it sees the patched version.
    assert entries[0]["resource"]["gender"] == "other"
    assert entries[1]["response"]["etag"] == 'W/"2"'
    assert entries[2]["response"]["status"] == "204 No Content"
    assert api.get(f"Patient/{second['id']}").status_code == 410
    stale = _transaction(
        [
            {
                "resource": binary,
                "request": {"method": "PATCH", "url": f"Patient/{first['id']}", "ifMatch": 'W/"1"'},
            }
        ]
    )
    assert api.post("", stale).status_code == 412


def test_batch_entries_succeed_or_fail_alone(api, cast):
    bundle = _transaction(
        [
            _post_entry(patient("Good")),
            _post_entry({"resourceType": "Patient", "gender": "banana"}),
            {"request": {"method": "GET", "url": f"Patient/{uuid.uuid4()}"}},
        ],
        kind="batch",
    )
    response = api.post("", bundle)
    assert response.status_code == 200
    result = fhir_valid(response.json())
    assert result["type"] == "batch-response"
    statuses = [entry["response"]["status"] for entry in result["entry"]]
    assert statuses[0] == "201 Created"
    assert statuses[1] == "422" and statuses[2] == "404"
    outcome = result["entry"][1]["response"]["outcome"]
    assert outcome["issue"][0]["expression"] == ["Bundle.entry[1].resource.gender"]


@pytest.mark.parametrize(
    "bundle",
    [
        {"resourceType": "Bundle", "type": "collection", "entry": []},
        {"resourceType": "Patient"},
        {"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": {}}]},
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"request": {"method": "POST", "url": "Banana"}, "resource": {}}],
        },
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"request": {"method": "PUT", "url": "Patient?name=x"}, "resource": {}}],
        },
    ],
)
def test_malformed_bundles_are_refused(api, cast, bundle):
    before = _count(cast.tenant_a)
    response = api.post("", bundle)
    assert response.status_code == 400
    assert fhir_valid(response.json())["resourceType"] == "OperationOutcome"
    assert _count(cast.tenant_a) == before


def test_each_entry_needs_its_scope(cast):
    generous_limits(cast.tenant_a, cast.client_a.grant)
    token = cast.client_a.token("system/Patient.cruds system/Observation.rs")
    limited = FhirClient(cast.tenant_a.slug, token)
    before = _count(cast.tenant_a)
    bundle = _transaction([_post_entry(patient()), _post_entry(observation("Patient/x"))])
    response = limited.post("", bundle)
    assert response.status_code == 403
    assert "Observation" in response.json()["issue"][0]["diagnostics"]
    assert _count(cast.tenant_a) == before
    batch = limited.post("", bundle | {"type": "batch"}).json()
    assert [e["response"]["status"] for e in batch["entry"]] == ["201 Created", "403"]


def test_conditional_create_in_transaction(api):
    marker = uuid.uuid4().hex
    body = patient(marker)
    existing = api.post("Patient", body).json()
    urn = f"urn:uuid:{uuid.uuid4()}"
    bundle = _transaction(
        [
            {
                "fullUrl": urn,
                "resource": body,
                "request": {
                    "method": "POST",
                    "url": "Patient",
                    "ifNoneExist": f"identifier=urn:oid:1.2.36.146.595.217.0.1|{marker}",
                },
            },
            _post_entry(observation(urn)),
        ]
    )
    response = api.post("", bundle)
    assert response.status_code == 200, response.content
    entries = response.json()["entry"]
    assert entries[0]["response"]["status"] == "200 OK"
    obs_path = "/".join(entries[1]["response"]["location"].split("/")[-4:-2])
    assert api.get(obs_path).json()["subject"]["reference"] == f"Patient/{existing['id']}"


def test_the_other_tenant_cannot(api, cast):
    urn = f"urn:uuid:{uuid.uuid4()}"
    response = api.post("", _transaction([_post_entry(patient("Private"), urn)]))
    location = response.json()["entry"][0]["response"]["location"]
    path = "/".join(location.split("/")[-4:-2])
    token_b = cast.client_b.token()
    own_b = FhirClient(cast.tenant_b.slug, token_b)
    read_back = own_b.post(
        "", _transaction([{"request": {"method": "GET", "url": path}}], kind="batch")
    ).json()
    assert read_back["entry"][0]["response"]["status"] == "404"
    # B cannot change A's resource through a Bundle on B's base either.
    update = own_b.post(
        "",
        _transaction(
            [
                {
                    "resource": {"resourceType": "Patient", "id": path.split("/")[1]},
                    "request": {"method": "PUT", "url": path},
                }
            ]
        ),
    )
    # Update-as-create: B's PUT makes B's own resource with that id; A's is untouched.
    assert update.json()["entry"][0]["response"]["status"] == "201 Created"
    stranger = FhirClient(cast.tenant_a.slug, token_b)
    assert stranger.post("", _transaction([_post_entry(patient())])).status_code == 404
    assert api.get(path).json()["meta"]["versionId"] == "1"


def test_a_bundle_posted_to_the_base_without_its_slash_is_processed(api, cast):
    bundle = _transaction([_post_entry(patient("Slashless"))])
    response = api.client.post(
        api.base.rstrip("/"),
        json.dumps(bundle),
        content_type="application/fhir+json",
        **api._headers(None),
    )
    assert response.status_code == 200, response.content
    assert response.json()["type"] == "transaction-response"
    assert response.json()["entry"][0]["response"]["status"].startswith("201")


def test_a_bundle_is_planned_once(api, monkeypatch):
    planned: list[int] = []
    plan_entry = bundles._plan_entry

    def counting(index, entry, base_url):
        planned.append(index)
        return plan_entry(index, entry, base_url)

    monkeypatch.setattr(bundles, "_plan_entry", counting)
    bundle = _transaction([_post_entry(patient("Once")), _post_entry(patient("Twice"))])
    response = api.post("", bundle)
    assert response.status_code == 200, response.content
    # Priced, scope-checked and run from the one plan made in describe().
    assert planned == [0, 1]


def test_an_oversized_bundle_is_413_before_its_entries_are_looked_at(api, cast, settings):
    settings.LIMITS_BUNDLE_MAX_ENTRIES = 2
    before = _count(cast.tenant_a)
    # Three entries, each malformed: the size refusal comes first.
    response = api.post("", _transaction([{"resource": {}}] * 3))
    assert response.status_code == 413
    issue = fhir_valid(response.json())["issue"][0]
    assert issue["code"] == "too-costly" and "3 entries" in issue["diagnostics"]
    assert api.post("", _transaction([_post_entry(patient("Fits"))] * 2)).status_code == 200
    assert _count(cast.tenant_a) == before + 2


@pytest.fixture
def failing_writes(cast):
    """A real server-side fault: a trigger in tenant A's store that makes PostgreSQL refuse
    any resource carrying the returned marker (undone with the test's transaction)."""
    marker = "explode-" + uuid.uuid4().hex
    with tenant_schema(cast.tenant_a), connection.cursor() as cursor:
        cursor.execute(
            f"""
            CREATE FUNCTION fault_{marker[8:]}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.content::text LIKE '%{marker}%' THEN
                    RAISE EXCEPTION 'injected fault';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER fault_{marker[8:]} BEFORE INSERT OR UPDATE ON fhir_resource
                FOR EACH ROW EXECUTE FUNCTION fault_{marker[8:]}();
            """
        )
    return marker


def test_a_batch_entry_failing_on_the_server_fails_alone_and_is_never_run_twice(
    api, cast, failing_writes
):
    run = uuid.uuid4().hex
    bundle = _transaction(
        [
            _post_entry(tagged(patient("Kept"), run)),
            _post_entry(tagged(observation("Patient/kept"), run)),
            _post_entry(tagged(patient(failing_writes), run)),
        ],
        kind="batch",
    )
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = api.post("", bundle, headers=key)
    assert first.status_code == 200, first.content
    entries = fhir_valid(first.json())["entry"]
    assert [e["response"]["status"] for e in entries] == ["201 Created", "201 Created", "500"]
    issue = entries[2]["response"]["outcome"]["issue"][0]
    assert issue["code"] == "exception"
    assert issue["expression"] == ["Bundle.entry[2]"]
    assert "injected" not in first.content.decode()  # the database's words stay inside
    for _ in range(2):
        retried = api.post("", bundle, headers=key)
        assert retried.status_code == 200
        assert retried.headers["Idempotent-Replayed"] == "?1"
        assert retried.json() == first.json()
    assert len(stored_tagged(cast.tenant_a, run)) == 2  # not 6: the retries ran nothing


def test_a_transaction_failing_on_the_server_stores_nothing_and_replays_its_500(
    api, cast, failing_writes
):
    run = uuid.uuid4().hex
    bundle = _transaction(
        [
            _post_entry(tagged(patient("Undone"), run)),
            _post_entry(tagged(patient(failing_writes), run)),
        ]
    )
    key = {"Idempotency-Key": str(uuid.uuid4())}
    client = FhirClient(cast.tenant_a.slug, api.token)
    client.client.raise_request_exception = False
    first = client.post("", bundle, headers=key)
    assert first.status_code == 500
    assert first.json()["resourceType"] == "OperationOutcome"
    retried = client.post("", bundle, headers=key)
    assert (retried.status_code, retried.json()) == (500, first.json())
    assert retried.headers["Idempotent-Replayed"] == "?1"
    assert stored_tagged(cast.tenant_a, run) == []
