"""A bulk export end to end on a real worker: the counts match the store; _since, _type,
_typeFilter, _elements, patient and Group narrow or shape it; the manifest is the IG's."""

import time
from typing import Any

from django.utils import timezone

from fhirplatform.fhir.models import Resource
from fhirplatform.schemas import tenant_schema
from tests.fhir.export.export_support import (
    ExportWorld,
    download,
    exported,
    kickoff,
    lines,
    run_export,
    status_path,
    wait_done,
)

HEART_RATE = "8867-4"


def _patients(world: ExportWorld, n: int) -> list[str]:
    with tenant_schema(world.tenant):
        rows = Resource.objects.filter(resource_type="Patient", deleted=False).order_by("pk")
        return list(rows.values_list("logical_id", flat=True)[:n])


def _compartment_counts(world: ExportWorld, patients: list[str]) -> dict[str, int]:
    with tenant_schema(world.tenant):
        rows = Resource.objects.filter(deleted=False, compartment__overlap=patients)
        counts: dict[str, int] = {}
        for resource_type in rows.values_list("resource_type", flat=True):
            counts[resource_type] = counts.get(resource_type, 0) + 1
        return counts


def _counts(by_type: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
    return {t: len(resources) for t, resources in by_type.items()}


def test_system_export_holds_every_stored_resource(live: ExportWorld) -> None:
    token = live.token()
    kicked = kickoff(live, token)
    assert kicked["Content-Location"].startswith("http")
    done = wait_done(status_path(kicked), token)
    assert done.status_code == 200
    assert done["Content-Type"].startswith("application/json")
    assert "Expires" in done
    manifest = done.json()
    assert manifest["requiresAccessToken"] is True
    assert manifest["request"].endswith(f"/fhir/{live.tenant.slug}/$export")
    assert manifest["transactionTime"].endswith("Z")
    assert _counts(exported(manifest, token)) == live.stored_counts()
    assert manifest["error"] == []


def test_type_narrows_to_the_named_types(live: ExportWorld) -> None:
    token = live.token()
    manifest = run_export(live, token, params={"_type": "Patient,Condition"})
    stored = live.stored_counts()
    assert _counts(exported(manifest, token)) == {
        "Patient": stored["Patient"],
        "Condition": stored["Condition"],
    }


def test_since_leaves_out_what_was_not_changed_after_it(live: ExportWorld) -> None:
    patient_id = _patients(live, 1)[0]
    time.sleep(0.01)
    since = timezone.now()
    patient = live.writer.get(f"Patient/{patient_id}").json()
    patient["gender"] = "unknown"
    assert live.writer.put(f"Patient/{patient_id}", patient).status_code == 200
    created = live.created(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": HEART_RATE}]},
            "subject": {"reference": f"Patient/{patient_id}"},
        }
    )
    token = live.token()
    manifest = run_export(live, token, params={"_since": since.isoformat()})
    by_type = exported(manifest, token)
    assert {t: [r["id"] for r in rs] for t, rs in by_type.items()} == {
        "Patient": [patient_id],
        "Observation": [created["id"]],
    }


def test_type_filter_exports_what_the_search_matches(live: ExportWorld) -> None:
    token = live.token()
    searched = live.writer.get("Observation", code=HEART_RATE, _count=1000, _total="accurate")
    expected = sorted(e["resource"]["id"] for e in searched.json().get("entry", []))
    assert expected
    manifest = run_export(
        live,
        token,
        params={"_type": "Observation", "_typeFilter": f"Observation?code={HEART_RATE}"},
    )
    by_type = exported(manifest, token)
    assert sorted(r["id"] for r in by_type["Observation"]) == expected


def test_patient_parameter_narrows_a_patient_export(live: ExportWorld) -> None:
    chosen = _patients(live, 2)
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "patient", "valueReference": {"reference": f"Patient/{p}"}} for p in chosen
        ],
    }
    token = live.token()
    manifest = run_export(live, token, "Patient/$export", body=body)
    by_type = exported(manifest, token)
    assert _counts(by_type) == _compartment_counts(live, chosen)
    assert sorted(r["id"] for r in by_type["Patient"]) == sorted(chosen)


def test_group_export_holds_its_members_compartments(live: ExportWorld) -> None:
    members = _patients(live, 3)[1:]
    group = live.group(members)
    token = live.token()
    manifest = run_export(live, token, f"Group/{group['id']}/$export")
    assert _counts(exported(manifest, token)) == _compartment_counts(live, members)


def test_a_missing_group_is_not_found(live: ExportWorld) -> None:
    response = kickoff(live, live.token(), "Group/no-such-group/$export")
    assert response.status_code == 404


def test_elements_subset_the_resources(live: ExportWorld) -> None:
    token = live.token()
    manifest = run_export(live, token, params={"_type": "Patient", "_elements": "gender"})
    patients = exported(manifest, token)["Patient"]
    assert patients
    for patient in patients:
        assert set(patient) <= {"resourceType", "id", "meta", "gender"}
        assert "SUBSETTED" in {tag["code"] for tag in patient["meta"]["tag"]}


def test_every_output_format_spelling_is_served(live: ExportWorld) -> None:
    token = live.token()
    for spelling in ("application/fhir+ndjson", "application/ndjson", "ndjson"):
        params = {"_type": "Organization", "_outputFormat": spelling}
        manifest = run_export(live, token, params=params)
        assert [o["type"] for o in manifest["output"]] == ["Organization"]


def test_files_download_as_ndjson_with_any_accept(live: ExportWorld) -> None:
    token = live.token()
    manifest = run_export(live, token, params={"_type": "Organization"})
    for accept in ("application/fhir+ndjson", "application/ndjson", "*/*"):
        response = download(manifest["output"][0]["url"], token, accept=accept)
        assert response.status_code == 200
        assert response["Content-Type"] == "application/fhir+ndjson"
        assert [r["resourceType"] for r in lines(response)] == ["Organization"] * len(
            lines(download(manifest["output"][0]["url"], token))
        )
