"""/fhir/<tenant>/AuditEvent: the caller's trail as BALP-shaped AuditEvents, searched by
date, agent, patient, entity, action, outcome and subtype, paged, read by id; read-only;
for clients granted AuditEvent; never another tenant's trail."""

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from fhirplatform.fhir.loading import fhir_load_path
from fhirplatform.fhir.models import Resource
from fhirplatform.schemas import tenant_schema
from tests.consent.enforcement_support import ConsentWorld, observation
from tests.fhir.rest_support import FhirClient, generous_limits


@pytest.fixture
def seen(world: ConsentWorld, committed: None) -> dict[str, Any]:
    """A patient, an Observation, and the reader's read of it (an event to find)."""
    world.policy()
    patient_id = world.created({"resourceType": "Patient", "name": [{"family": "Trail"}]})["id"]
    obs_id = world.created(observation(patient_id))["id"]
    reader = world.client(world.reader)
    read = reader.get(f"Observation/{obs_id}")
    assert read.status_code == 200
    return {"patient": patient_id, "observation": obs_id, "request_id": read["X-Request-ID"]}


def _auditor(world: ConsentWorld) -> FhirClient:
    return world.writer  # system/*.cruds: AuditEvent.rs included


def _entries(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.content
    return [entry["resource"] for entry in response.json().get("entry", [])]


def test_the_read_is_found_by_patient_in_balp_shape(world, seen):
    found = _entries(_auditor(world).get("AuditEvent", patient=seen["patient"], subtype="read"))
    event = next(e for e in found if any(
        x.get("what", {}).get("reference") == f"Observation/{seen['observation']}"
        for x in e["entity"]
    ))  # fmt: skip
    assert event["resourceType"] == "AuditEvent" and event["action"] == "R"
    assert event["outcome"] == "0" and event["subtype"][0]["code"] == "read"
    agent = event["agent"][0]
    assert agent["who"]["identifier"]["value"] == world.reader.client.client_id
    assert agent["requestor"] is True and agent["network"]["address"] == "127.0.0.1"
    assert {"what": {"reference": f"Patient/{seen['patient']}"}} | {
        "role": event["entity"][0]["role"]
    } == event["entity"][0]
    assert event["purposeOfEvent"][0]["coding"][0]["code"] == "TREAT"

    again = _auditor(world).get(f"AuditEvent/{event['id']}")
    assert again.status_code == 200 and again.json() == event


def test_every_search_parameter_narrows_the_trail(world, seen):
    auditor = _auditor(world)
    reader_id = world.reader.client.client_id
    today = datetime.now(UTC).date().isoformat()
    by_agent = _entries(auditor.get("AuditEvent", agent=reader_id, date=f"ge{today}"))
    assert by_agent and all(
        e["agent"][0]["who"]["identifier"]["value"] == reader_id for e in by_agent
    )
    entity = f"Observation/{seen['observation']}"
    by_entity = _entries(auditor.get("AuditEvent", entity=entity))
    assert by_entity and all(
        any(x.get("what", {}).get("reference") == entity for x in e["entity"]) for e in by_entity
    )
    created = _entries(auditor.get("AuditEvent", action="C", outcome="0"))
    assert created and all(e["action"] == "C" and e["outcome"] == "0" for e in created)
    assert _entries(auditor.get("AuditEvent", date="lt2000-01-01")) == []

    hostile = ({"patient": "\x00"}, {"agent": "a\x00b"})
    for bad in (
        {"nonsense": "1"},
        {"action": "X"},
        {"date": "yesterday"},
        {"patient:exact": "x"},
        *hostile,
    ):
        url = f"{auditor.base}/AuditEvent"
        assert auditor.client.get(url, bad, **auditor._headers(None)).status_code == 400


def test_pages_follow_without_repeating(world, seen):
    auditor = _auditor(world)
    first = auditor.get("AuditEvent", _count="2")
    ids = [e["id"] for e in _entries(first)]
    link = next(x["url"] for x in first.json()["link"] if x["relation"] == "next")
    second = auditor.client.get(link, **auditor._headers(None))
    more = [e["id"] for e in _entries(second)]
    assert len(ids) == 2 and more and not set(ids) & set(more)
    assert max(map(int, more)) < min(map(int, ids))  # newest first


def test_the_trail_is_read_only_and_needs_its_scope(world, seen):
    auditor = _auditor(world)
    assert auditor.post("AuditEvent", {"resourceType": "AuditEvent"}).status_code == 405
    assert auditor.delete("AuditEvent/1").status_code == 405
    assert auditor.get("AuditEvent/999999999").status_code == 404
    narrow = world.client(world.reader, scopes="system/Observation.rs")
    assert narrow.get("AuditEvent").status_code == 403


def test_another_tenant_sees_its_own_trail_only(world, seen, cast):
    generous_limits(cast.tenant_b, cast.client_b.grant)
    theirs = FhirClient(cast.tenant_b.slug, cast.client_b.token())
    assert _entries(theirs.get("AuditEvent", patient=seen["patient"])) == []
    assert _entries(theirs.get("AuditEvent", agent=world.reader.client.client_id)) == []


def test_the_trail_is_never_stored_versioned_or_bundled(world, seen, tmp_path):
    """Every other way an AuditEvent could reach the resource store is refused with one
    answer that says where the trail is."""
    auditor = _auditor(world)
    for path in ("AuditEvent/_history", "AuditEvent/1/_history", "AuditEvent/1/_history/1"):
        refused = auditor.get(path)
        assert refused.status_code == 400, path
        issue = refused.json()["issue"][0]
        assert issue["code"] == "not-supported" and "audit trail" in issue["diagnostics"]
    assert auditor.post("AuditEvent/_search", {}).status_code == 400
    by_type = auditor.get("", _type="AuditEvent")
    assert by_type.status_code == 400 and "audit trail" in by_type.content.decode()

    forged = {
        "resourceType": "AuditEvent",
        "type": {"code": "rest"},
        "recorded": "2026-01-01T00:00:00Z",
    }
    transaction = auditor.post("", {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": forged, "request": {"method": "POST", "url": "AuditEvent"}}],
    })  # fmt: skip
    assert transaction.status_code == 400 and "audit trail" in transaction.content.decode()
    batch = auditor.post("", {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": "AuditEvent/1"}}],
    })  # fmt: skip
    assert batch.status_code == 200, batch.content
    assert batch.json()["entry"][0]["response"]["status"].startswith("400")

    loaded = tmp_path / "events.ndjson"
    loaded.write_text(json.dumps(forged | {"id": "forged"}) + "\n")
    report = fhir_load_path(tenant=world.tenant, path=loaded)
    assert report.failures and "audit trail" in str(report.failures)
    with tenant_schema(world.tenant):
        assert not Resource.objects.filter(resource_type="AuditEvent").exists()
