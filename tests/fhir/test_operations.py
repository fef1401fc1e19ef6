"""FHIR operations through the request pipeline: $validate (type and instance),
Patient/$everything, Observation/$lastn, and the answer to an operation the server does
not offer. Each with its scopes, another tenant's token, and a consent-denied patient."""

from typing import Any

import pytest

from audit.models import AuditEvent
from fhirplatform.fhir.models import Resource
from fhirplatform.schemas import tenant_schema
from tests.consent.enforcement_support import ConsentWorld, client_actor, consent, observation

OK = "All OK"


@pytest.fixture
def fresh(world: ConsentWorld, committed: None) -> ConsentWorld:
    world.policy()
    return world


def _patient(world: ConsentWorld, family: str = "Operand") -> str:
    return str(world.created({"resourceType": "Patient", "name": [{"family": family}]})["id"])


def _deny_reader(world: ConsentWorld, patient_id: str) -> None:
    provision = {
        "type": "permit",
        "provision": [{"type": "deny", "actor": client_actor(world.reader.client.client_id)}],
    }
    world.created(consent(patient_id, provision))


def _observation(patient_id: str, code: str, when: str, category: str = "vital-signs") -> Any:
    resource = observation(patient_id)
    resource["code"] = {"coding": [{"system": "http://loinc.org", "code": code}]}
    resource["effectiveDateTime"] = when
    resource["category"] = [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                    "code": category,
                }
            ]
        }
    ]
    return resource


def _ids(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def _next(bundle: dict[str, Any]) -> str | None:
    return next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)


def _relative(world: ConsentWorld, url: str) -> str:
    return url.split(f"/fhir/{world.tenant.slug}/", 1)[1]


def _stored_count(world: ConsentWorld) -> int:
    with tenant_schema(world.tenant):
        return Resource.objects.count()


def _audit(world: ConsentWorld, response: Any) -> AuditEvent:
    with tenant_schema(world.tenant):
        events = list(AuditEvent.objects.filter(request_id=response["X-Request-ID"]))
    assert len(events) == 1, events
    return events[0]


# $validate


def test_validate_a_valid_resource_answers_all_ok_and_stores_nothing(fresh):
    before = _stored_count(fresh)
    response = fresh.writer.post(
        "Patient/$validate", {"resourceType": "Patient", "gender": "female"}
    )
    assert response.status_code == 200, response.content
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"] == [
        {"severity": "information", "code": "informational", "diagnostics": OK}
    ]
    assert _stored_count(fresh) == before


def test_validate_an_invalid_resource_answers_200_with_the_validators_issues(fresh):
    before = _stored_count(fresh)
    bad = {"resourceType": "Observation", "status": "done", "code": {"text": "x"}}
    response = fresh.writer.post("Observation/$validate", bad)
    assert response.status_code == 200
    issues = response.json()["issue"]
    assert issues[0]["severity"] == "error"
    assert "Observation.status" in issues[0]["expression"]
    # The same content written is refused by the same validator, with the same issue.
    created = fresh.writer.post("Observation", bad)
    assert created.status_code == 422
    assert created.json()["issue"] == issues
    assert _stored_count(fresh) == before


def test_validate_takes_a_parameters_resource(fresh):
    patient = {"resourceType": "Patient", "gender": "unknowable"}
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "resource", "resource": patient},
            {"name": "mode", "valueCode": "create"},
        ],
    }
    response = fresh.writer.post("Patient/$validate", body)
    assert response.status_code == 200
    assert response.json()["issue"][0]["expression"] == ["Patient.gender"]
    # A type other than the URL's is an invalid resource for it, reported as such.
    mismatched = fresh.writer.post("Patient/$validate", {"resourceType": "Observation"})
    assert mismatched.status_code == 200
    assert mismatched.json()["issue"][0]["severity"] == "error"


@pytest.mark.parametrize(
    "body",
    [
        {"resourceType": "Parameters", "parameter": [{"name": "mode", "valueCode": "create"}]},
        {"resourceType": "Parameters", "parameter": [{"name": "profile", "valueCanonical": "x"}]},
        {"resourceType": "Parameters", "parameter": "resource"},
        [1, 2],
    ],
)
def test_validate_without_something_to_validate_is_a_400(fresh, body):
    response = fresh.writer.post("Patient/$validate", body)
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"


def test_validate_on_an_instance_checks_the_body_as_its_update(fresh):
    patient_id = _patient(fresh)
    good = {"resourceType": "Patient", "id": patient_id, "active": True}
    response = fresh.writer.post(f"Patient/{patient_id}/$validate", good)
    assert response.json()["issue"][0]["diagnostics"] == OK
    other_id = fresh.writer.post(f"Patient/{patient_id}/$validate", good | {"id": "another"})
    assert other_id.status_code == 200
    assert other_id.json()["issue"][0]["expression"] == ["Patient.id"]
    no_id = fresh.writer.post(f"Patient/{patient_id}/$validate", {"resourceType": "Patient"})
    assert no_id.json()["issue"][0]["code"] == "required"
    as_create = fresh.writer.post(f"Patient/{patient_id}/$validate?mode=create", good)
    assert as_create.status_code == 400
    assert as_create.json()["issue"][0]["code"] == "not-supported"
    with tenant_schema(fresh.tenant):
        assert Resource.objects.get(logical_id=patient_id).version_id == 1


def test_validate_get_on_an_instance_validates_the_stored_resource(fresh):
    patient_id = _patient(fresh)
    response = fresh.client(fresh.reader).get(f"Patient/{patient_id}/$validate")
    assert response.status_code == 200
    assert response.json()["issue"][0]["diagnostics"] == OK
    assert fresh.client(fresh.reader).get("Patient/no-such-id/$validate").status_code == 404


def test_validate_get_of_a_denied_patient_answers_as_its_read(fresh):
    patient_id = _patient(fresh)
    _deny_reader(fresh, patient_id)
    reader = fresh.client(fresh.reader)
    denied = reader.get(f"Patient/{patient_id}/$validate")
    assert denied.status_code == reader.get(f"Patient/{patient_id}").status_code == 404


def test_validate_needs_the_scope_of_what_it_rehearses(fresh):
    body = {"resourceType": "Patient"}
    read_only = fresh.client(fresh.reader)  # system/*.rs
    refused = read_only.post("Patient/$validate", body)
    assert refused.status_code == 403
    assert "system/Patient.c" in refused.json()["issue"][0]["diagnostics"]
    assert read_only.post("Patient/x/$validate", body | {"id": "x"}).status_code == 403


def test_validate_with_another_tenants_token_is_the_shared_404(fresh, cast):
    from tests.fhir.rest_support import FhirClient

    stranger = FhirClient(fresh.tenant.slug, cast.client_b.token())
    response = stranger.post("Patient/$validate", {"resourceType": "Patient"})
    assert response.status_code == 404
    assert response.json()["issue"][0]["code"] == "not-found"


# Patient/$everything


def test_everything_is_the_compartment_with_the_patient_first(fresh):
    patient_id = _patient(fresh)
    obs = [fresh.created(observation(patient_id))["id"] for _ in range(3)]
    encounter = fresh.created(
        {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"code": "AMB"},
            "subject": {"reference": f"Patient/{patient_id}"},
        }
    )["id"]
    someone_else = _patient(fresh, "Elsewhere")
    fresh.created(observation(someone_else))
    response = fresh.client(fresh.reader).get(f"Patient/{patient_id}/$everything")
    assert response.status_code == 200, response.content
    bundle = response.json()
    assert bundle["type"] == "searchset"
    assert bundle["entry"][0]["resource"]["id"] == patient_id
    assert set(_ids(bundle)) == {patient_id, encounter, *obs}
    assert bundle["total"] == 5


def test_everything_pages_with_signed_cursors_and_filters_by_type(fresh):
    patient_id = _patient(fresh)
    obs = {fresh.created(observation(patient_id))["id"] for _ in range(4)}
    reader = fresh.client(fresh.reader)
    seen: list[str] = []
    url: str | None = f"Patient/{patient_id}/$everything?_count=2"
    while url:
        bundle = reader.get(url).json()
        seen += _ids(bundle)
        url = _next(bundle)
        url = _relative(fresh, url) if url else None
    assert seen[0] == patient_id
    assert len(seen) == len(set(seen)) == 5
    only = reader.get(f"Patient/{patient_id}/$everything", _type="Observation").json()
    assert set(_ids(only)) == obs
    first = reader.get(f"Patient/{patient_id}/$everything?_count=2").json()
    # The next link of one patient's pages is not valid for another patient.
    other = _patient(fresh)
    link = _next(first)
    assert link is not None
    cursor = link.split("_cursor=", 1)[1]
    stolen = reader.get(f"Patient/{other}/$everything?_count=2&_cursor={cursor}")
    assert stolen.status_code == 400
    assert stolen.json()["issue"][0]["expression"] == ["_cursor"]


def test_everything_since_leaves_out_older_resources(fresh):
    patient_id = _patient(fresh)
    fresh.created(observation(patient_id))
    reader = fresh.client(fresh.reader)
    later = reader.get(f"Patient/{patient_id}/$everything", _since="2999-01-01").json()
    assert _ids(later) == []
    assert reader.get(f"Patient/{patient_id}/$everything", _since="yesterday").status_code == 400


def test_everything_of_a_denied_patient_is_what_a_denied_search_gets(fresh):
    patient_id = _patient(fresh)
    fresh.created(observation(patient_id))
    _deny_reader(fresh, patient_id)
    reader = fresh.client(fresh.reader)
    everything = reader.get(f"Patient/{patient_id}/$everything")
    search = reader.get("Observation", patient=patient_id)
    assert everything.status_code == search.status_code == 200
    assert _ids(everything.json()) == _ids(search.json()) == []
    # ... and an unknown patient looks the same.
    unknown = reader.get("Patient/never-was/$everything").json()
    assert _ids(unknown) == [] and unknown["total"] == 0
    # The other partner's client is not denied.
    assert patient_id in _ids(
        fresh.client(fresh.other).get(f"Patient/{patient_id}/$everything").json()
    )


def test_everything_returns_only_the_types_the_scopes_allow(fresh):
    patient_id = _patient(fresh)
    fresh.created(observation(patient_id))
    patients_only = fresh.client(fresh.reader, scopes="system/Patient.rs")
    bundle = patients_only.get(f"Patient/{patient_id}/$everything").json()
    assert _ids(bundle) == [patient_id]
    refused = patients_only.get(f"Patient/{patient_id}/$everything", _type="Observation")
    assert refused.status_code == 403
    no_patient = fresh.client(fresh.reader, scopes="system/Observation.rs")
    assert no_patient.get(f"Patient/{patient_id}/$everything").status_code == 403


def test_everything_names_the_patients_it_showed_in_the_audit_event(fresh):
    patient_id = _patient(fresh)
    fresh.created(observation(patient_id))
    response = fresh.client(fresh.reader).get(f"Patient/{patient_id}/$everything")
    event = _audit(fresh, response)
    assert event.patients == [patient_id]
    assert "$everything" in event.query


def test_everything_with_another_tenants_token_is_the_shared_404(fresh, cast):
    from tests.fhir.rest_support import FhirClient

    patient_id = _patient(fresh)
    stranger = FhirClient(fresh.tenant.slug, cast.client_b.token())
    assert stranger.get(f"Patient/{patient_id}/$everything").status_code == 404


# Observation/$lastn


def test_lastn_gives_the_most_recent_per_code_and_patient(fresh):
    patient_id = _patient(fresh)
    pulses = [
        fresh.created(_observation(patient_id, "8867-4", f"2024-0{month}-01T10:00:00Z"))["id"]
        for month in (1, 2, 3)
    ]
    weight = fresh.created(_observation(patient_id, "29463-7", "2023-05-01"))["id"]
    lab = fresh.created(_observation(patient_id, "718-7", "2024-06-01", category="laboratory"))
    reader = fresh.client(fresh.reader)
    latest = reader.get("Observation/$lastn", patient=patient_id, category="vital-signs").json()
    assert latest["type"] == "searchset"
    assert set(_ids(latest)) == {pulses[2], weight}
    two = reader.get("Observation/$lastn", patient=patient_id, code="8867-4", max="2").json()
    assert _ids(two) == [pulses[2], pulses[1]]
    assert lab["id"] not in _ids(two)
    assert "max=2" in two["link"][0]["url"]


@pytest.mark.parametrize(
    "query",
    [
        {"code": "8867-4"},  # no subject
        {"patient": "x"},  # no category or code
        {"patient": "x", "code": "8867-4", "max": "0"},
        {"patient": "x", "code": "8867-4", "max": "many"},
        {"patient": "x", "code": "8867-4", "_count": "5"},
        {"patient": "x", "code": "8867-4", "nonsense": "1"},
    ],
)
def test_lastn_refuses_what_it_cannot_answer_with_a_400(fresh, query):
    response = fresh.client(fresh.reader).get("Observation/$lastn", **query)
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"


def test_lastn_of_a_denied_patient_is_what_a_denied_search_gets(fresh):
    patient_id = _patient(fresh)
    fresh.created(_observation(patient_id, "8867-4", "2024-01-01"))
    _deny_reader(fresh, patient_id)
    reader = fresh.client(fresh.reader)
    lastn = reader.get("Observation/$lastn", patient=patient_id, code="8867-4")
    assert lastn.status_code == 200
    assert _ids(lastn.json()) == []
    allowed = fresh.client(fresh.other).get("Observation/$lastn", patient=patient_id, code="8867-4")
    assert len(_ids(allowed.json())) == 1
    event = _audit(fresh, allowed)
    assert event.patients == [patient_id]


def test_lastn_needs_observation_search_and_the_token_of_the_tenant(fresh, cast):
    from tests.fhir.rest_support import FhirClient

    patients_only = fresh.client(fresh.reader, scopes="system/Patient.rs")
    query = "Observation/$lastn?patient=x&code=8867-4"
    refused = patients_only.get(query)
    assert refused.status_code == 403
    assert "system/Observation.s" in refused.json()["issue"][0]["diagnostics"]
    stranger = FhirClient(fresh.tenant.slug, cast.client_b.token())
    assert stranger.get(query).status_code == 404


# Operations the server does not offer


@pytest.mark.parametrize(
    ("method", "path", "named"),
    [
        ("GET", "$anything", "$anything"),
        ("POST", "$export-ish", "$export-ish"),
        ("GET", "Observation/$everything", "$everything"),
        ("GET", "Patient/$lastn", "$lastn"),
        ("GET", "Observation/abc/$anything", "$anything"),
        ("DELETE", "Patient/abc/$meta-delete", "$meta-delete"),
    ],
)
def test_an_unknown_operation_is_a_400_naming_it(fresh, method, path, named):
    reader = fresh.client(fresh.reader)
    response = (
        reader.get(path)
        if method == "GET"
        else reader.send(method, path, {"resourceType": "Parameters"})
    )
    assert response.status_code == 400, response.content
    issue = response.json()["issue"][0]
    assert issue["code"] == "not-supported"
    assert named in issue["diagnostics"]


def test_an_unknown_operation_still_needs_a_token(fresh):
    from django.test import Client

    response = Client().get(f"/fhir/{fresh.tenant.slug}/Observation/$lastn")
    assert response.status_code == 401


# What they cost PostgreSQL


def _statements(call: Any) -> tuple[int, Any]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    call()  # warm: the token check of a warm process needs no statement
    with CaptureQueriesContext(connection) as captured:
        response = call()
    assert response.status_code == 200, response.content
    return len(captured.captured_queries), response


@pytest.mark.parametrize("observations", [1, 6])
def test_operations_cost_a_fixed_number_of_statements(fresh, observations):
    patient_id = _patient(fresh)
    for day in range(observations):
        fresh.created(_observation(patient_id, "8867-4", f"2024-01-{day + 1:02d}"))
    reader, writer = fresh.client(fresh.reader), fresh.writer
    counts = {
        "everything": _statements(lambda: reader.get(f"Patient/{patient_id}/$everything"))[0],
        "lastn": _statements(
            lambda: reader.get("Observation/$lastn", patient=patient_id, code="8867-4", max="3")
        )[0],
        "validate-type": _statements(
            lambda: writer.post("Patient/$validate", {"resourceType": "Patient"})
        )[0],
        "validate-instance": _statements(lambda: reader.get(f"Patient/{patient_id}/$validate"))[0],
    }
    # Independent of how many resources the answer holds (no statement per row).
    assert counts == STATEMENTS, counts


# Counted by Django (BEGIN/COMMIT not included). $everything and $lastn: the schema, the
# consent snapshot, the selection (for $lastn: the ranking, then the rows; then its
# _include step's), the audit event. $validate of a body: its audit event alone (nothing
# is read). $validate of a stored resource: answered from the response cache on the
# second call, so its audit event alone too.
STATEMENTS = {"everything": 5, "lastn": 6, "validate-type": 1, "validate-instance": 1}
