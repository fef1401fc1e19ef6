"""Every stored row knows its patient compartment and its security labels, on every write
path; and the writes of one transaction are told to the caches once, after it commits."""

import base64
import gzip
import importlib
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps as django_apps
from django.db import connection, transaction

from fhirplatform.fhir import services
from fhirplatform.fhir.changes import ResourceChanges, resource_changes_pending
from fhirplatform.fhir.compartments import (
    compartment_parameters,
    resource_patients,
    security_labels,
)
from fhirplatform.fhir.loading import fhir_load_path
from fhirplatform.fhir.models import Resource, ResourceVersion
from fhirplatform.fhir.search.extract import resource_values
from fhirplatform.fhir.search.values import ReferenceValue
from fhirplatform.schemas import schema_activate, schema_public, tenant_schema
from tests.consent.enforcement_support import DENY_ALL, consent
from tests.fhir.rest_support import FhirClient, generous_limits, observation, patient
from tests.fhir.test_search_indexing import SYNTHEA, synthea_resources

SOURCE = "urn:test"


def _patients(resource_type: str, content: dict[str, Any], logical_id: str = "self") -> list[str]:
    return resource_patients(resource_type=resource_type, logical_id=logical_id, content=content)


# What a resource's content puts it in (no database).


def test_a_patient_is_in_its_own_compartment_and_in_those_its_links_name():
    content = {
        "resourceType": "Patient",
        "link": [
            {"other": {"reference": "Patient/merged"}, "type": "replaces"},
            {"other": {"reference": "RelatedPerson/mother"}, "type": "seealso"},
        ],
    }
    assert _patients("Patient", content, "p1") == ["merged", "p1"]
    assert _patients("Patient", {"resourceType": "Patient"}, "p2") == ["p2"]


def test_an_observation_is_in_the_compartment_of_its_subject_and_patient_performers():
    content = observation("Patient/b") | {
        "performer": [{"reference": "Patient/a/_history/3"}, {"reference": "Practitioner/x"}]
    }
    assert _patients("Observation", content) == ["a", "b"]


def test_encounter_and_claim_follow_the_compartment_definition():
    encounter = {"resourceType": "Encounter", "subject": {"reference": "Patient/e"}}
    claim = {
        "resourceType": "Claim",
        "patient": {"reference": "Patient/insured"},
        "payee": {"type": {"text": "subscriber"}, "party": {"reference": "Patient/payee"}},
        "provider": {"reference": "Practitioner/doc"},
    }
    assert _patients("Encounter", encounter) == ["e"]
    assert _patients("Claim", claim) == ["insured", "payee"]
    assert compartment_parameters()["Claim"] == {"patient", "payee"}


def test_references_that_name_no_patient_put_a_resource_in_no_compartment():
    organization = {"resourceType": "Organization", "partOf": {"reference": "Patient/x"}}
    group_subject = observation("Group/cohort")
    contained = observation("#p1") | {"contained": [{"resourceType": "Patient", "id": "p1"}]}
    assert _patients("Organization", organization) == []  # the type is outside the compartment
    assert _patients("Observation", group_subject) == []
    assert _patients("Observation", contained) == []
    assert _patients("Observation", {"resourceType": "Observation", "subject": "junk"}) == []


def test_an_absolute_reference_counts_as_the_search_index_stores_it():
    """The index keeps an absolute URL as a url without a target type, so `?patient=x`
    does not find the resource, and no patient's compartment holds it either."""
    url = "https://elsewhere.example/fhir/Patient/a"
    content = observation(url)
    indexed = [
        value
        for parameter, value in resource_values(resource_type="Observation", content=content)
        if parameter.name == "subject"
    ]
    assert indexed == [ReferenceValue("", "", url)]
    assert _patients("Observation", content) == []


def test_the_compartment_is_what_the_search_index_extracts_from_synthea():
    """The compartment reads a cut of the content; the whole content, through the index's
    extraction, names the same patients."""
    for resource in synthea_resources(2):
        resource_type = resource["resourceType"]
        params = compartment_parameters().get(resource_type, frozenset())
        expected = {
            value.target_id
            for parameter, value in resource_values(resource_type=resource_type, content=resource)
            if parameter.name in params
            and isinstance(value, ReferenceValue)
            and value.target_type == "Patient"
        } | ({resource["id"]} if resource_type == "Patient" else set())
        assert _patients(resource_type, resource, resource["id"]) == sorted(expected)


def test_security_labels_are_the_codes_of_meta_security_and_junk_is_ignored():
    content = {
        "meta": {
            "security": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"},
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"},
                {"system": "urn:other", "code": "R"},
                {"system": "urn:no-code"},
                {"code": ""},
                {"code": 7},
                "ETH",
                None,
            ]
        }
    }
    assert security_labels(content) == ["PSY", "R"]
    junk: Any
    for junk in ({}, {"meta": None}, {"meta": "x"}, {"meta": {"security": {"code": "R"}}}, []):
        assert security_labels(junk) == []


# The columns on every write path.


def _labelled(resource: dict[str, Any], *codes: str) -> dict[str, Any]:
    return resource | {"meta": {"security": [{"code": code} for code in codes]}}


def _columns(resource_type: str, logical_id: str) -> tuple[Any, list[tuple[Any, ...]]]:
    """The current row's (compartment, labels, deleted) and each version's columns."""
    current = Resource.objects.values_list("compartment", "security_labels", "deleted").get(
        resource_type=resource_type, logical_id=logical_id
    )
    versions = list(
        ResourceVersion.objects.filter(resource_type=resource_type, logical_id=logical_id)
        .order_by("version_id")
        .values_list("version_id", "method", "compartment", "security_labels")
    )
    return current, versions


@pytest.mark.django_db
def test_create_update_patch_and_delete_fill_both_columns(cast):
    schema_activate(cast.tenant_a)
    try:
        a = services.resource_create(resource_type="Patient", content=patient("A"), source=SOURCE)
        b = services.resource_create(resource_type="Patient", content=patient("B"), source=SOURCE)
        assert (a.compartment, a.security_labels) == ([a.logical_id], [])
        obs = services.resource_create(
            resource_type="Observation",
            content=_labelled(observation(f"Patient/{a.logical_id}"), "R"),
            source=SOURCE,
        )
        moved = _labelled(observation(f"Patient/{b.logical_id}"), "PSY", "ETH")
        services.resource_update(
            resource_type="Observation",
            logical_id=obs.logical_id,
            content=moved | {"id": obs.logical_id},
            source=SOURCE,
        )
        services.resource_patch(
            resource_type="Observation",
            logical_id=obs.logical_id,
            patch=[{"op": "remove", "path": "/meta/security/1"}],
            source=SOURCE,
        )
        services.resource_delete(resource_type="Observation", logical_id=obs.logical_id)

        current, versions = _columns("Observation", obs.logical_id)
        assert current == ([b.logical_id], ["PSY"], True)  # a delete keeps the last ones
        assert versions == [
            (1, "POST", [a.logical_id], ["R"]),
            (2, "PUT", [b.logical_id], ["ETH", "PSY"]),
            (3, "PATCH", [b.logical_id], ["PSY"]),
            (4, "DELETE", [b.logical_id], ["PSY"]),
        ]
        # An update bringing the deleted resource back computes them afresh.
        services.resource_update(
            resource_type="Observation",
            logical_id=obs.logical_id,
            content=observation(f"Patient/{a.logical_id}") | {"id": obs.logical_id},
            source=SOURCE,
        )
        current, versions = _columns("Observation", obs.logical_id)
        assert current == ([a.logical_id], [], False)
        assert versions[-1] == (5, "PUT", [a.logical_id], [])
    finally:
        schema_public()


@pytest.fixture
def api(cast):
    generous_limits(cast.tenant_a, cast.tenant_b, cast.client_a.grant, cast.client_b.grant)
    return FhirClient(cast.tenant_a.slug, cast.client_a.token())


def _entry_ids(response: Any) -> list[str]:
    """The logical ids of a transaction-response's entries (from their version urls)."""
    urls = [entry["response"]["location"] for entry in response.json()["entry"]]
    return [url.split("/_history/")[0].rsplit("/", 1)[1] for url in urls]


@pytest.mark.django_db
def test_conditional_create_and_a_transaction_bundle_fill_both_columns(api, cast):
    mrn = uuid.uuid4().hex
    body = patient("Conditional") | {"identifier": [{"system": "urn:mrn", "value": mrn}]}
    created = api.post("Patient", body, headers={"If-None-Exist": f"identifier=urn:mrn|{mrn}"})
    assert created.status_code == 201, created.content
    patient_id = created.json()["id"]

    patient_urn = f"urn:uuid:{uuid.uuid4()}"
    patch = [{"op": "add", "path": "/meta", "value": {"security": [{"code": "N"}]}}]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": patient_urn,
                "resource": patient("Bundled"),
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": _labelled(observation(patient_urn), "R"),
                "request": {"method": "POST", "url": "Observation"},
            },
            {
                "resource": {
                    "resourceType": "Binary",
                    "contentType": "application/json-patch+json",
                    "data": base64.b64encode(json.dumps(patch).encode()).decode(),
                },
                "request": {"method": "PATCH", "url": f"Patient/{patient_id}"},
            },
        ],
    }
    response = api.post("", bundle)
    assert response.status_code == 200, response.content
    bundled_patient, bundled_obs, _ = _entry_ids(response)

    with tenant_schema(cast.tenant_a):
        assert _columns("Patient", patient_id)[1] == [
            (1, "POST", [patient_id], []),
            (2, "PATCH", [patient_id], ["N"]),
        ]
        assert _columns("Patient", bundled_patient)[0] == ([bundled_patient], [], False)
        assert _columns("Observation", bundled_obs)[1] == [(1, "POST", [bundled_patient], ["R"])]


def _one_synthea_bundle(tmp_path: Path) -> Path:
    files = sorted(SYNTHEA.glob("*.json.gz"), key=lambda path: path.stat().st_size)
    files = [path for path in files if "Information" not in path.name]  # people, not sites
    if not files:
        pytest.skip("Synthea sample data not present")
    return Path(shutil.copy(files[0], tmp_path / files[0].name))


@pytest.mark.django_db
def test_load_fhir_fills_both_columns_on_current_and_version_rows(cast, tmp_path):
    path = _one_synthea_bundle(tmp_path)
    with gzip.open(path) as stream:
        entries = json.load(stream)["entry"]
    in_compartment = [
        e for e in entries if e["resource"]["resourceType"] in compartment_parameters()
    ]

    with tenant_schema(cast.tenant_a):
        before = Resource.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    report = fhir_load_path(tenant=cast.tenant_a, path=path)
    assert report.failures == [] and report.resources == len(entries)

    with tenant_schema(cast.tenant_a):
        loaded = list(Resource.objects.filter(pk__gt=before))
        patients = [r for r in loaded if r.resource_type == "Patient"]
        assert len(patients) == 1
        patient_id = patients[0].logical_id
        for row in loaded:
            expected = _patients(row.resource_type, row.content, row.logical_id)
            assert row.compartment == expected
            version = row.versions.get()
            assert (version.compartment, version.security_labels) == (expected, [])
        owned = [r for r in loaded if r.compartment]
        assert len(owned) == len(in_compartment)  # Organization, Practitioner: none
        assert all(r.compartment == [patient_id] for r in owned)


# The back-fill migration.

backfill = importlib.import_module(
    "fhirplatform.fhir.migrations.0002_compartment_security_labels"
).consent_columns_backfill


@pytest.mark.django_db
def test_the_backfill_fills_rows_written_before_the_columns(cast):
    schema_activate(cast.tenant_a)
    try:
        subject = services.resource_create(
            resource_type="Patient", content=_labelled(patient("Old"), "R"), source=SOURCE
        )
        obs = services.resource_create(
            resource_type="Observation",
            content=_labelled(observation(f"Patient/{subject.logical_id}"), "ETH"),
            source=SOURCE,
        )
        services.resource_delete(resource_type="Observation", logical_id=obs.logical_id)
        with connection.cursor() as cursor:  # what AddField leaves on rows written before it
            for table in ("fhir_resource", "fhir_resourceversion"):
                cursor.execute(f"UPDATE {table} SET compartment = '{{}}', security_labels = '{{}}'")

        backfill(django_apps, None)

        assert _columns("Patient", subject.logical_id) == (
            ([subject.logical_id], ["R"], False),
            [(1, "POST", [subject.logical_id], ["R"])],
        )
        assert _columns("Observation", obs.logical_id) == (
            ([subject.logical_id], ["ETH"], True),
            [
                (1, "POST", [subject.logical_id], ["ETH"]),
                (2, "DELETE", [subject.logical_id], ["ETH"]),
            ],
        )
    finally:
        schema_public()


# What a transaction tells the caches.


def _told_callbacks(callbacks: list[Any]) -> list[Any]:
    return [c for c in callbacks if c.__module__ == "fhirplatform.fhir.changes"]


@pytest.mark.django_db
def test_a_transaction_records_its_patients_and_types_for_one_callback(
    cast, django_capture_on_commit_callbacks
):
    schema_activate(cast.tenant_a)
    try:
        with django_capture_on_commit_callbacks() as callbacks:
            a = services.resource_create(resource_type="Patient", content=patient(), source="t")
            b = services.resource_create(resource_type="Patient", content=patient(), source="t")
            obs = services.resource_create(
                resource_type="Observation",
                content=observation(f"Patient/{a.logical_id}"),
                source=SOURCE,
            )
            services.resource_create(
                resource_type="Organization", content={"resourceType": "Organization"}, source="t"
            )
            # Moving the observation from A to B touches both.
            services.resource_update(
                resource_type="Observation",
                logical_id=obs.logical_id,
                content=observation(f"Patient/{b.logical_id}") | {"id": obs.logical_id},
                source=SOURCE,
            )
            assert resource_changes_pending() == [
                ResourceChanges(
                    tenant_schema=cast.tenant_a.schema_name,
                    patients=frozenset({a.logical_id, b.logical_id}),
                    resource_types=frozenset({"Patient", "Observation", "Organization"}),
                    consent=False,
                )
            ]
        assert len(_told_callbacks(callbacks)) == 1
    finally:
        schema_public()


@pytest.mark.django_db
def test_a_bundle_is_one_callback_and_a_consent_is_flagged(
    api, cast, django_capture_on_commit_callbacks
):
    subject = f"urn:uuid:{uuid.uuid4()}"
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": subject, "resource": patient(), "request": {"method": "POST"}},
            {"resource": observation(subject), "request": {"method": "POST"}},
            {"resource": consent("x", DENY_ALL) | {"patient": {"reference": subject}}},
        ],
    }
    for entry in bundle["entry"]:
        entry["request"] = {"method": "POST", "url": entry["resource"]["resourceType"]}
    with django_capture_on_commit_callbacks() as callbacks:
        response = api.post("", bundle)
        assert response.status_code == 200, response.content
        patient_id = _entry_ids(response)[0]
        schema_activate(cast.tenant_a)  # the request left the connection on public
        assert resource_changes_pending() == [
            ResourceChanges(
                tenant_schema=cast.tenant_a.schema_name,
                patients=frozenset({patient_id}),
                resource_types=frozenset({"Patient", "Observation", "Consent"}),
                consent=True,
            )
        ]
        schema_public()
    assert len(_told_callbacks(callbacks)) == 1


@pytest.mark.django_db
def test_a_loaded_bundle_is_one_callback_with_its_patient(
    cast, tmp_path, django_capture_on_commit_callbacks
):
    path = _one_synthea_bundle(tmp_path)
    with gzip.open(path) as stream:
        resources = [e["resource"] for e in json.load(stream)["entry"]]
    with django_capture_on_commit_callbacks() as callbacks:
        fhir_load_path(tenant=cast.tenant_a, path=path)
        (changes,) = resource_changes_pending()
    assert len(_told_callbacks(callbacks)) == 1
    assert changes.resource_types == {r["resourceType"] for r in resources}
    assert len(changes.patients) == 1 and not changes.consent


class _Undo(Exception):
    """Rolls a test's own transaction back."""


def test_a_rolled_back_write_records_nothing(cast, committed):
    """Real transactions (no test transaction around them), each rolled back at its end."""
    with pytest.raises(_Undo), tenant_schema(cast.tenant_a):
        services.resource_create(resource_type="Patient", content=patient(), source=SOURCE)
        assert len(resource_changes_pending()) == 1
        raise _Undo
    assert resource_changes_pending() == [] and connection.run_on_commit == []

    with pytest.raises(_Undo), tenant_schema(cast.tenant_a):
        # A write rolled back with its savepoint, its callback registered inside it...
        with pytest.raises(_Undo), transaction.atomic():
            services.resource_create(resource_type="Patient", content=patient(), source="t")
            raise _Undo
        assert resource_changes_pending() == []
        # ...is not told with the transaction's later writes.
        kept = services.resource_create(resource_type="Patient", content=patient(), source="t")
        (changes,) = resource_changes_pending()
        assert changes.patients == {kept.logical_id}
        assert len(_told_callbacks([entry[1] for entry in connection.run_on_commit])) == 1
        raise _Undo


def test_the_caches_are_told_after_commit_at_once_in_autocommit_and_never_on_rollback(
    cast, committed
):
    """Through the real generations (fhirplatform/cache/generations.py): the tokens of
    what a write touched change when, and only when, it commits."""
    generations = importlib.import_module("fhirplatform.cache.generations")
    schema = cast.tenant_a.schema_name
    with tenant_schema(cast.tenant_a):
        a = services.resource_create(resource_type="Patient", content=patient(), source=SOURCE)
        b = services.resource_create(resource_type="Patient", content=patient(), source=SOURCE)
    names = [
        generations.gen_patient(a.logical_id),
        generations.gen_patient(b.logical_id),
        generations.gen_type("Observation"),
        generations.CONSENT.value,
    ]

    def changed(since: dict[str, str]) -> set[str]:
        now = generations.generations_read(tenant_schema=schema, names=names)
        assert now is not None, "the cache's Redis is unreachable"
        return {name for name in names if now[name] != since[name]}

    start = generations.generations_read(tenant_schema=schema, names=names)
    with pytest.raises(_Undo), tenant_schema(cast.tenant_a):
        services.resource_create(
            resource_type="Observation", content=observation(f"Patient/{a.logical_id}"), source="t"
        )
        raise _Undo
    assert changed(start) == set()

    with tenant_schema(cast.tenant_a):
        services.resource_create(
            resource_type="Observation", content=observation(f"Patient/{a.logical_id}"), source="t"
        )
        assert changed(start) == set()  # not before the commit
    assert changed(start) == {names[0], names[2]}

    start = generations.generations_read(tenant_schema=schema, names=names)
    schema_activate(cast.tenant_a)
    try:
        assert not connection.in_atomic_block
        services.resource_create(
            resource_type="Consent", content=consent(b.logical_id, DENY_ALL), source=SOURCE
        )
        assert changed(start) == {names[1], names[3]}
    finally:
        schema_public()
