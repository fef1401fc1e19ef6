"""Kick-offs that are refused, and what a lenient one leaves out: every refusal is a 400
(or 403, 429) OperationOutcome, and creates no job."""

import uuid
from typing import Any

import pytest

from fhirplatform.fhir.export.models import ExportJob
from fhirplatform.limits.selectors import profile_cache
from fhirplatform.schemas import tenant_schema
from tenants.services import client_create, rate_plan_create
from tests.fhir.export.export_support import (
    ExportWorld,
    download,
    kickoff,
    lines,
    run_export,
)


def _jobs(world: ExportWorld) -> int:
    with tenant_schema(world.tenant):
        return ExportJob.objects.count()


def _refused(world: ExportWorld, status: int, *args: Any, **kwargs: Any) -> dict[str, Any]:
    before = _jobs(world)
    response = kickoff(world, world.token(), *args, **kwargs)
    assert response.status_code == status, response.content
    assert _jobs(world) == before
    body: dict[str, Any] = response.json()
    assert body["resourceType"] == "OperationOutcome"
    return body


@pytest.mark.parametrize(
    "params",
    [
        {"_type": "NoSuchType"},
        {"_since": "yesterday"},
        {"_since": "2024-01-01T00:00:00"},  # no time zone
        {"_typeFilter": "Observation"},
        {"_typeFilter": "Observation?no-such-param=1"},
        {"_typeFilter": "Observation?_sort=date"},
        {"_elements": "not an element"},
        {"_outputFormat": "text/csv"},
        {"includeAssociatedData": "LatestProvenanceResources"},
        {"_bogus": "1"},
        {"patient": "Patient/x"},  # a GET cannot name patients
    ],
)
def test_bad_or_unsupported_parameters_are_refused(
    export: ExportWorld, committed: None, params: dict[str, str]
) -> None:
    _refused(export, 400, params=params)


def test_prefer_respond_async_is_required(export: ExportWorld, committed: None) -> None:
    body = _refused(export, 400, headers={"HTTP_PREFER": "return=minimal"})
    assert "respond-async" in body["issue"][0]["diagnostics"]


def test_a_post_needs_a_parameters_body(export: ExportWorld, committed: None) -> None:
    _refused(export, 400, "Patient/$export", body={"resourceType": "Patient"})
    bad_reference = {
        "resourceType": "Parameters",
        "parameter": [{"name": "patient", "valueReference": {"reference": "Observation/1"}}],
    }
    _refused(export, 400, "Patient/$export", body=bad_reference)


def test_a_type_outside_the_scopes_is_refused(export: ExportWorld, committed: None) -> None:
    before = _jobs(export)
    token = export.token(scopes="system/Patient.rs")
    response = kickoff(export, token, params={"_type": "Observation"})
    assert response.status_code == 400
    assert _jobs(export) == before


def test_no_exportable_scope_is_forbidden(export: ExportWorld, committed: None) -> None:
    token = export.token(scopes="system/Patient.c")
    assert kickoff(export, token).status_code == 403


def test_a_patient_export_refuses_types_outside_the_compartment(
    export: ExportWorld, committed: None
) -> None:
    _refused(export, 400, "Patient/$export", params={"_type": "Organization"})


def test_lenient_handling_skips_and_reports(
    export: ExportWorld, committed: None, celery_worker_process: Any
) -> None:
    token = export.token()
    params = {"_type": "Patient,Organization", "_bogus": "1", "_outputFormat": "text/csv"}
    kicked = kickoff(
        export, token, params=params, headers={"HTTP_PREFER": "respond-async, handling=lenient"}
    )
    assert kicked.status_code == 202
    warnings = [i["diagnostics"] for i in kicked.json()["issue"] if i["severity"] == "warning"]
    assert len(warnings) == 2
    manifest = run_export(
        export, token, params=params, headers={"HTTP_PREFER": "respond-async; handling=lenient"}
    )
    assert sorted(o["type"] for o in manifest["output"]) == ["Organization", "Patient"]
    [error] = manifest["error"]
    outcomes = lines(download(error["url"], token))
    diagnostics = [o["issue"][0]["diagnostics"] for o in outcomes]
    assert any("_bogus" in d for d in diagnostics)
    assert any("text/csv" in d for d in diagnostics)


def test_caps_from_the_plan_refuse_one_export_too_many(export: ExportWorld, db: None) -> None:
    """In the test's transaction: the jobs stay queued (no worker is told of them)."""
    plan = rate_plan_create(
        name="export-caps-test",
        description="one export per client, two per tenant",
        read_per_minute=10_000,
        search_per_minute=10_000,
        write_per_minute=10_000,
        history_per_minute=10_000,
        batch_per_minute=10_000,
        export_per_hour=10_000,
        export_poll_per_minute=10_000,
        concurrency=100,
        daily_quota=10_000_000,
        export_jobs_per_tenant=2,
        export_jobs_per_client=1,
    )
    others = [
        client_create(
            partner_name=f"Cap {n} {uuid.uuid4().hex[:6]}",
            tenant_slugs=[export.tenant.slug],
            scopes="system/*.rs",
        ).grants[0]
        for n in (1, 2)
    ]
    for grant in (export.reader, *others):
        type(grant).objects.filter(pk=grant.pk).update(plan=plan)
    type(export.tenant).objects.filter(pk=export.tenant.pk).update(plan=plan)
    profile_cache.clear()
    token = export.token()
    assert kickoff(export, token).status_code == 202
    _over_cap(kickoff(export, token), "this client")
    # Another client has room of its own, until the tenant's cap is reached.
    assert kickoff(export, export.token(others[0])).status_code == 202
    _over_cap(kickoff(export, export.token(others[1])), "the tenant")


def _over_cap(refused: Any, who: str) -> None:
    assert refused.status_code == 429
    assert refused["Retry-After"] == "60"
    issue = refused.json()["issue"][0]
    assert [c["code"] for c in issue["details"]["coding"]] == ["export-jobs"]
    assert issue["diagnostics"].startswith(who)
