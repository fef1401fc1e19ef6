"""load_fhir (Bundles and NDJSON) and the synthetic generator."""

import gzip
import json
import uuid

import pytest
from django.core.management import CommandError, call_command

from fhirplatform.fhir.loading import fhir_generate, fhir_load_path
from fhirplatform.fhir.models import Resource, ResourceVersion
from fhirplatform.fhir.search.models import ReferenceIndex, TokenIndex
from fhirplatform.fhir.synthetic import synthetic_resources
from fhirplatform.fhir.validation import resource_validate
from fhirplatform.schemas import tenant_schema
from tests.fhir.rest_support import observation, patient, stored_tagged, tagged

pytestmark = pytest.mark.django_db


LOINC = "http://loinc.org"


def _in(tenant, query):
    with tenant_schema(tenant):
        return query()


def _indexed(tenant, model, resources, **match):
    """Logical ids of `resources` that have a row of the index `model` matching `match`."""
    rows = model.objects.filter(resource__in=[r.pk for r in resources], **match)
    return _in(tenant, lambda: set(rows.values_list("resource__logical_id", flat=True)))


def _transaction_bundle(run):
    patient_urn = f"urn:uuid:{uuid.uuid4()}"
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": patient_urn,
                "resource": tagged(patient("Loaded") | {"id": patient_urn[9:]}, run),
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": tagged(observation(patient_urn), run),
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }


def test_load_transaction_bundles_and_ndjson(cast, tmp_path):
    run = uuid.uuid4().hex
    (tmp_path / "one.json").write_text(json.dumps(_transaction_bundle(run)))
    with gzip.open(tmp_path / "two.json.gz", "wt") as stream:
        json.dump(_transaction_bundle(run), stream)
    nd_patient = f"nd-patient-{run}"
    lines = [
        tagged(patient("Nd") | {"id": nd_patient}, run),
        tagged(observation(f"Patient/{nd_patient}") | {"id": f"nd-obs-{run}"}, run),
    ]
    (tmp_path / "data.ndjson").write_text("\n".join(json.dumps(r) for r in lines) + "\n")

    report = fhir_load_path(tenant=cast.tenant_a, path=tmp_path)
    assert report.failures == []
    assert report.files == 3 and report.resources == 6
    assert report.by_type == {"Patient": 3, "Observation": 3}

    loaded = stored_tagged(cast.tenant_a, run)
    patients = [r for r in loaded if r.resource_type == "Patient"]
    observations = [r for r in loaded if r.resource_type == "Observation"]
    assert len(patients) == 3 and len(observations) == 3
    patient_ids = {p.logical_id for p in patients}
    assert nd_patient in patient_ids  # NDJSON keeps its ids
    for obs in observations:
        target = obs.content["subject"]["reference"]
        assert target.removeprefix("Patient/") in patient_ids  # urn:uuid resolved
        assert obs.content["meta"]["versionId"] == "1"
        resource_validate(content=obs.content, resource_type="Observation")
    versions = _in(cast.tenant_a, lambda: list(ResourceVersion.objects.filter(resource__in=loaded)))
    assert sorted(v.resource_id for v in versions) == sorted(r.pk for r in loaded)
    # Every loaded resource is indexed for search.
    indexed = _indexed(cast.tenant_a, ReferenceIndex, observations, param="subject")
    assert indexed == {obs.logical_id for obs in observations}
    # Loading the NDJSON again makes new versions, not duplicates.
    fhir_load_path(tenant=cast.tenant_a, path=tmp_path / "data.ndjson")
    again = _in(cast.tenant_a, lambda: Resource.objects.get(logical_id=nd_patient))
    assert again.version_id == 2


def test_a_bad_file_loads_nothing_and_is_reported(cast, tmp_path):
    run = uuid.uuid4().hex
    bundle = _transaction_bundle(run)
    bundle["entry"][1]["resource"]["status"] = "sort-of"
    (tmp_path / "bad.json").write_text(json.dumps(bundle))
    first_line = json.dumps(tagged({"resourceType": "Patient"}, run))
    (tmp_path / "broken.ndjson").write_text(f"{first_line}\n{{not json\n")
    report = fhir_load_path(tenant=cast.tenant_a, path=tmp_path)
    assert len(report.failures) == 2
    assert "Observation.status" in report.failures[0]
    assert "line 2" in report.failures[1]
    assert stored_tagged(cast.tenant_a, run) == []
    with pytest.raises(CommandError):
        call_command("load_fhir", str(tmp_path / "bad.json"), tenant=cast.tenant_a.slug)
    with pytest.raises(CommandError):
        call_command("load_fhir", str(tmp_path), tenant="no-such-tenant")


def test_a_file_the_api_would_refuse_as_json_is_refused_by_the_loader(cast, tmp_path):
    # The loader reads JSON with the API's own parser: a duplicate key would otherwise be
    # validated as one resource and stored as another.
    run = uuid.uuid4().hex
    text = json.dumps(_transaction_bundle(run))
    (tmp_path / "duplicate.json").write_text(
        text.replace(
            '{"resourceType": "Bundle"', '{"resourceType": "Bundle", "resourceType": "Bundle"', 1
        )
    )
    patient = json.dumps(tagged({"resourceType": "Patient"}, run))
    (tmp_path / "deep.ndjson").write_text(
        patient[:-1] + ', "extension": ' + "[" * 150 + "]" * 150 + "}\n"
    )
    report = fhir_load_path(tenant=cast.tenant_a, path=tmp_path)
    deep, duplicate = sorted(report.failures)
    assert deep.endswith(
        "deep.ndjson line 1: Request body is not valid JSON: nested deeper than 100 levels"
    )
    assert duplicate.endswith(
        "duplicate.json: Request body is not valid JSON: the key 'resourceType' appears twice "
        "in one object"
    )
    assert stored_tagged(cast.tenant_a, run) == []


def test_load_command_reports_rate(cast, tmp_path, capsys):
    (tmp_path / "one.json").write_text(json.dumps(_transaction_bundle(uuid.uuid4().hex)))
    call_command("load_fhir", str(tmp_path / "one.json"), tenant=cast.tenant_a.slug, json=True)
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["resources"] == 2 and report["resources_per_second"] > 0


def test_generator_is_deterministic_and_valid():
    first = list(synthetic_resources(patients=3, observations_per_patient=12, seed=7))
    second = list(synthetic_resources(patients=3, observations_per_patient=12, seed=7))
    other = list(synthetic_resources(patients=3, observations_per_patient=12, seed=8))
    assert first == second and first != other
    kinds = {r["resourceType"] for r in first}
    assert {
        "Patient",
        "Encounter",
        "Observation",
        "Condition",
        "MedicationRequest",
        "Organization",
        "Practitioner",
    } <= kinds
    assert sum(r["resourceType"] == "Observation" for r in first) == 36
    for resource in first:
        resource_validate(content=resource, resource_type=resource["resourceType"])


def test_generate_into_one_tenant_only(cast):
    # The generator is deterministic: the same seed names the ids it is about to load.
    generated = list(synthetic_resources(patients=2, observations_per_patient=5, seed=3))
    ids = [r["id"] for r in generated if r["resourceType"] == "Observation"]
    report = fhir_generate(tenant=cast.tenant_a, patients=2, observations_per_patient=5, seed=3)
    assert report.by_type["Patient"] == 2 and report.by_type["Observation"] == 10
    observations = _in(cast.tenant_a, lambda: list(Resource.objects.filter(logical_id__in=ids)))
    indexed = _indexed(cast.tenant_a, TokenIndex, observations, param="code", system=LOINC)
    assert indexed == set(ids)  # every generated observation is indexed
    # The other tenant received nothing.
    all_ids = [r["id"] for r in generated]
    assert not _in(cast.tenant_b, lambda: Resource.objects.filter(logical_id__in=all_ids).exists())
