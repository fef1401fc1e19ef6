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
from tests.fhir.rest_support import observation, patient

pytestmark = pytest.mark.django_db


def _in(tenant, query):
    with tenant_schema(tenant):
        return query()


def _transaction_bundle():
    patient_urn = f"urn:uuid:{uuid.uuid4()}"
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": patient_urn,
                "resource": patient("Loaded") | {"id": patient_urn[9:]},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": observation(patient_urn),
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }


def test_load_transaction_bundles_and_ndjson(cast, tmp_path):
    (tmp_path / "one.json").write_text(json.dumps(_transaction_bundle()))
    with gzip.open(tmp_path / "two.json.gz", "wt") as stream:
        json.dump(_transaction_bundle(), stream)
    ndjson_patient = patient("Nd") | {"id": "nd-patient-1"}
    lines = [ndjson_patient, observation("Patient/nd-patient-1") | {"id": "nd-obs-1"}]
    (tmp_path / "data.ndjson").write_text("\n".join(json.dumps(r) for r in lines) + "\n")

    # Tenant A may hold committed data of other modules: compare with what was there.
    before = set(_in(cast.tenant_a, lambda: list(Resource.objects.values_list("pk", flat=True))))
    versions_before = _in(cast.tenant_a, lambda: ResourceVersion.objects.count())
    report = fhir_load_path(tenant=cast.tenant_a, path=tmp_path)
    assert report.failures == []
    assert report.files == 3 and report.resources == 6
    assert report.by_type == {"Patient": 3, "Observation": 3}

    loaded = _in(cast.tenant_a, lambda: list(Resource.objects.exclude(pk__in=before)))
    patients = [r for r in loaded if r.resource_type == "Patient"]
    observations = [r for r in loaded if r.resource_type == "Observation"]
    assert len(patients) == 3 and len(observations) == 3
    patient_ids = {p.logical_id for p in patients}
    assert "nd-patient-1" in patient_ids  # NDJSON keeps its ids
    for obs in observations:
        target = obs.content["subject"]["reference"]
        assert target.removeprefix("Patient/") in patient_ids  # urn:uuid resolved
        assert obs.content["meta"]["versionId"] == "1"
        resource_validate(content=obs.content, resource_type="Observation")
    versions = _in(cast.tenant_a, lambda: ResourceVersion.objects.count())
    assert versions == versions_before + 6
    # Every loaded resource is indexed for search.
    indexed = _in(
        cast.tenant_a,
        lambda: set(
            ReferenceIndex.objects.filter(
                resource_type="Observation",
                param="subject",
                resource_id__in=[o.pk for o in observations],
            ).values_list("resource_id", flat=True)
        ),
    )
    assert indexed == {obs.pk for obs in observations}
    # Loading the NDJSON again makes new versions, not duplicates.
    fhir_load_path(tenant=cast.tenant_a, path=tmp_path / "data.ndjson")
    again = _in(cast.tenant_a, lambda: Resource.objects.get(logical_id="nd-patient-1"))
    assert again.version_id == 2


def test_a_bad_file_loads_nothing_and_is_reported(cast, tmp_path):
    bundle = _transaction_bundle()
    bundle["entry"][1]["resource"]["status"] = "sort-of"
    (tmp_path / "bad.json").write_text(json.dumps(bundle))
    (tmp_path / "broken.ndjson").write_text('{"resourceType": "Patient"}\n{not json\n')
    before = _in(cast.tenant_a, lambda: Resource.objects.count())
    report = fhir_load_path(tenant=cast.tenant_a, path=tmp_path)
    assert len(report.failures) == 2
    assert "Observation.status" in report.failures[0]
    assert "line 2" in report.failures[1]
    assert _in(cast.tenant_a, lambda: Resource.objects.count()) == before
    with pytest.raises(CommandError):
        call_command("load_fhir", str(tmp_path / "bad.json"), tenant=cast.tenant_a.slug)
    with pytest.raises(CommandError):
        call_command("load_fhir", str(tmp_path), tenant="no-such-tenant")


def test_load_command_reports_rate(cast, tmp_path, capsys):
    (tmp_path / "one.json").write_text(json.dumps(_transaction_bundle()))
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
    def loinc_rows():
        return _in(
            cast.tenant_a,
            lambda: TokenIndex.objects.filter(
                resource_type="Observation", param="code", system="http://loinc.org"
            ).count(),
        )

    b_before, loinc_before = _in(cast.tenant_b, lambda: Resource.objects.count()), loinc_rows()
    report = fhir_generate(tenant=cast.tenant_a, patients=2, observations_per_patient=5, seed=3)
    assert report.by_type["Patient"] == 2 and report.by_type["Observation"] == 10
    assert loinc_rows() == loinc_before + 10  # every generated observation is indexed
    # The other tenant received nothing.
    assert _in(cast.tenant_b, lambda: Resource.objects.count()) == b_before
