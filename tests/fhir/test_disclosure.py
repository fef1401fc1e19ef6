"""What a caller may learn beyond its scopes: a conditional create's match, a chained
search's target type, and whether a tenant behind a public URL exists or is suspended."""

import uuid
from typing import Any
from urllib.parse import urlencode

import pytest
from django.test import Client

from tenants.models import Tenant, TenantStatus
from tests.fhir.rest_support import (
    FhirClient,
    generous_limits,
    observation,
    patient,
    stored_tagged,
    tagged,
)

pytestmark = pytest.mark.django_db

MRN = "urn:oid:1.2.36.146.595.217.0.1"


@pytest.fixture
def full(cast: Any) -> FhirClient:
    generous_limits(cast.tenant_a, cast.tenant_b, cast.client_a.grant, cast.client_b.grant)
    return FhirClient(cast.tenant_a.slug, cast.client_a.token())


def _as(cast: Any, scopes: str) -> FhirClient:
    return FhirClient(cast.tenant_a.slug, cast.client_a.token(scopes))


def _existing(full: FhirClient, run: str) -> tuple[dict[str, Any], dict[str, str]]:
    """A stored Patient, and the If-None-Exist header that matches it."""
    created = full.post("Patient", tagged(patient(run), run))
    assert created.status_code == 201, created.content
    return created.json(), {"If-None-Exist": f"identifier={MRN}|{run}"}


def _conditional_entry(run: str) -> dict[str, Any]:
    return {
        "resource": tagged(patient(run), run),
        "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={MRN}|{run}"},
    }


def _bundle(kind: str, *entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def test_a_create_only_token_cannot_match_by_criteria(full, cast):
    run = uuid.uuid4().hex
    _, header = _existing(full, run)
    create_only = _as(cast, "system/Patient.c")
    refused = create_only.post("Patient", tagged(patient(run), run), headers=header)
    assert refused.status_code == 403
    outcome = refused.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "system/Patient.s" in outcome["issue"][0]["diagnostics"]
    assert "Location" not in refused.headers and "ETag" not in refused.headers
    # The same refusal when nothing matches: the answer tells nothing about the data.
    other = create_only.post(
        "Patient", patient(), headers={"If-None-Exist": f"identifier={MRN}|{uuid.uuid4().hex}"}
    )
    assert (other.status_code, other.json()) == (403, outcome)
    assert len(stored_tagged(cast.tenant_a, run)) == 1
    # Creating without a condition is what a create-only token is for.
    assert create_only.post("Patient", patient()).status_code == 201


def test_a_match_without_read_scope_has_no_body_and_names_nothing(full, cast):
    run = uuid.uuid4().hex
    existing, header = _existing(full, run)
    create_search = _as(cast, "system/Patient.cs")
    for prefer in ("return=representation", "return=OperationOutcome", "return=minimal"):
        matched = create_search.post(
            "Patient", tagged(patient(run), run), headers=header | {"Prefer": prefer}
        )
        assert matched.status_code == 200
        assert matched.content == b""
        for name in ("Location", "Content-Location", "ETag", "Last-Modified"):
            assert name not in matched.headers
    assert len(stored_tagged(cast.tenant_a, run)) == 1
    # With read scope the match is shown, as before.
    shown = _as(cast, "system/Patient.crs").post("Patient", patient(run), headers=header)
    assert shown.status_code == 200
    assert shown.json()["id"] == existing["id"]
    assert shown.headers["ETag"] == 'W/"1"'


def test_a_bundle_entry_match_without_read_scope_names_nothing(full, cast):
    run = uuid.uuid4().hex
    existing, _ = _existing(full, run)
    create_search = _as(cast, "system/Patient.cs")
    representation = {"Prefer": "return=representation"}
    for kind in ("batch", "transaction"):
        response = create_search.post(
            "", _bundle(kind, _conditional_entry(run)), headers=representation
        )
        assert response.status_code == 200, response.content
        (entry,) = response.json()["entry"]
        assert entry == {"response": {"status": "200 OK"}}
        assert existing["id"] not in response.content.decode()
    refused = _as(cast, "system/Patient.c").post("", _bundle("batch", _conditional_entry(run)))
    assert refused.json()["entry"][0]["response"]["status"] == "403"
    assert len(stored_tagged(cast.tenant_a, run)) == 1
    shown = _as(cast, "system/Patient.crs").post(
        "", _bundle("batch", _conditional_entry(run)), headers=representation
    )
    assert shown.json()["entry"][0]["resource"]["id"] == existing["id"]


@pytest.fixture
def linked(full: FhirClient) -> dict[str, str]:
    """A Patient with a birth date and an Observation about it, both of this test's run."""
    run = uuid.uuid4().hex
    subject = full.post("Patient", tagged(patient(run, birthDate="1931-05-17"), run)).json()
    body = tagged(observation(f"Patient/{subject['id']}"), run)
    body["code"]["coding"][0]["code"] = run[:20]  # a code only this run's Observation has
    obs = full.post("Observation", body).json()
    return {"run": run, "patient": subject["id"], "observation": obs["id"], "code": run[:20]}


@pytest.mark.parametrize(
    "chain",
    ["subject:Patient.birthdate", "subject.birthdate", "patient.birthdate"],
)
def test_a_chain_needs_search_scope_on_the_type_it_reaches(full, cast, linked, chain):
    query = {"code": linked["code"], chain: "1931-05-17"}
    observation_only = _as(cast, "system/Observation.rs")
    refused = observation_only.get(f"Observation?{urlencode(query)}")
    assert refused.status_code == 403
    assert "system/Patient.s" in refused.json()["issue"][0]["diagnostics"]
    # The same 403 whether or not the chained value matches: no oracle.
    miss = observation_only.get(f"Observation?{urlencode(query | {chain: '1900-01-01'})}")
    assert (miss.status_code, miss.json()) == (403, refused.json())
    # POST _search and a Bundle's search entry are refused alike.
    form = observation_only.send(
        "POST",
        "Observation/_search",
        urlencode(query),
        content_type="application/x-www-form-urlencoded",
    )
    assert form.status_code == 403
    url = f"Observation?{urlencode(query)}"
    entry = observation_only.post("", _bundle("batch", {"request": {"method": "GET", "url": url}}))
    assert entry.json()["entry"][0]["response"]["status"] == "403"
    # With search scope on Patient the chain runs.
    allowed = _as(cast, "system/Observation.rs system/Patient.s").get(
        f"Observation?{urlencode(query)}"
    )
    assert allowed.status_code == 200
    assert [e["resource"]["id"] for e in allowed.json()["entry"]] == [linked["observation"]]


def test_a_system_search_chain_and_conditional_criteria_need_the_target_scope(full, cast, linked):
    observation_only = _as(cast, "system/Observation.crs")
    system = observation_only.get("?_type=Observation&subject:Patient.birthdate=1931-05-17")
    assert system.status_code == 403
    # If-None-Exist criteria are a search: a chain in them is refused the same way.
    criteria = f"code={linked['code']}&subject:Patient.birthdate=1931-05-17"
    created = observation_only.post(
        "Observation",
        observation(f"Patient/{linked['patient']}"),
        headers={"If-None-Exist": criteria},
    )
    assert created.status_code == 403
    assert "system/Patient.s" in created.json()["issue"][0]["diagnostics"]


def test_includes_leave_out_what_the_caller_may_not_read(full, cast, linked):
    observation_only = _as(cast, "system/Observation.rs")
    included = observation_only.get(
        "Observation", code=linked["code"], _include="Observation:subject"
    ).json()
    assert [e["search"]["mode"] for e in included["entry"]] == ["match"]
    patient_only = _as(cast, "system/Patient.rs")
    revincluded = patient_only.get(
        "Patient", _id=linked["patient"], _revinclude="Observation:subject"
    ).json()
    assert [e["resource"]["id"] for e in revincluded["entry"]] == [linked["patient"]]


def test_has_reaches_nothing(full, cast, linked):
    # _has (reverse chaining) is not supported: it is ignored and reported, or refused in
    # strict handling, so it filters nothing and cannot tell a caller anything.
    patient_only = _as(cast, "system/Patient.rs")
    answers = []
    for code in (linked["code"], "no-such-code"):
        has = {"_id": linked["patient"], "_has:Observation:subject:code": code}
        bundle = patient_only.get(f"Patient?{urlencode(has)}").json()
        assert [e["search"]["mode"] for e in bundle["entry"]] == ["match", "outcome"]
        answers.append(bundle["entry"][0]["resource"]["id"])
    assert answers == [linked["patient"]] * 2
    strict = patient_only.get(
        f"Patient?_has:Observation:subject:code={linked['code']}",
        headers={"Prefer": "handling=strict"},
    )
    assert strict.status_code == 400


def _public(path: str) -> Any:
    return Client().get(path, HTTP_ACCEPT="application/fhir+json")


def _answer(response: Any) -> tuple[int, bytes, dict[str, str]]:
    headers = {k: v for k, v in response.headers.items() if k != "X-Request-ID"}
    return response.status_code, response.content, headers


@pytest.mark.parametrize("endpoint", ["metadata", ".well-known/smart-configuration"])
def test_a_suspended_tenant_looks_like_an_unknown_one(cast, endpoint):
    active = _public(f"/fhir/{cast.tenant_b.slug}/{endpoint}")
    assert active.status_code == 200
    Tenant.objects.filter(pk=cast.tenant_b.pk).update(status=TenantStatus.SUSPENDED)
    suspended = _public(f"/fhir/{cast.tenant_b.slug}/{endpoint}")
    # An unknown slug of the same length, so not even Content-Length differs.
    unknown = _public(f"/fhir/{'x' * len(cast.tenant_b.slug)}/{endpoint}")
    assert suspended.status_code == 404
    assert _answer(suspended) == _answer(unknown)
    assert suspended.json()["issue"][0]["code"] == "not-found"
