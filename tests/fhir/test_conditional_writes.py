"""Conditional update, delete and patch (`[base]/Type?criteria`), through REST, Bundles and
the loader's conditional create: matched with the search parser, only among what the
caller's consent decision lets it see."""

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from audit.models import AuditEvent
from fhirplatform.fhir import services
from fhirplatform.fhir.loading import fhir_load_path
from fhirplatform.fhir.models import Resource
from fhirplatform.schemas import tenant_schema
from tenants.scopes import scopes_parse
from tenants.services import client_create, token_issue
from tests.consent.enforcement_support import DENY_ALL, consent, consent_world, unique
from tests.fhir.rest_support import FhirClient, fhir_valid, generous_limits, observation, patient

pytestmark = pytest.mark.django_db

MRN = "urn:mrn"
JSON_PATCH = "application/json-patch+json"


@pytest.fixture
def api(cast: Any) -> FhirClient:
    generous_limits(cast.tenant_a, cast.tenant_b, cast.client_a.grant, cast.client_b.grant)
    return FhirClient(cast.tenant_a.slug, cast.client_a.token())


def _mrn() -> str:
    return uuid.uuid4().hex


def _with_mrn(value: str, **extra: Any) -> dict[str, Any]:
    return patient(value, identifier=[{"system": MRN, "value": value}], **extra)


def _created(api: FhirClient, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post(body["resourceType"], body)
    assert response.status_code == 201, response.content
    created: dict[str, Any] = response.json()
    return created


def _current(tenant: Any, logical_id: str) -> Resource:
    with tenant_schema(tenant):
        return Resource.objects.get(logical_id=logical_id)


def _count(tenant: Any, value: str) -> int:
    with tenant_schema(tenant):
        rows = Resource.objects.filter(content__identifier__contains=[{"value": value}])
        return rows.filter(deleted=False).count()


def test_conditional_update_creates_updates_and_refuses_several(api, cast):
    value = _mrn()
    criteria = f"Patient?identifier={MRN}|{value}"
    created = api.put(criteria, _with_mrn(value))
    assert created.status_code == 201 and created["Location"].endswith("/_history/1")
    logical_id = created.json()["id"]
    uuid.UUID(logical_id)  # no id in the body and no match: a server id
    updated = api.put(criteria, _with_mrn(value, gender="female"))
    assert updated.status_code == 200
    assert (updated.json()["id"], updated.json()["meta"]["versionId"]) == (logical_id, "2")
    stale = api.put(criteria, _with_mrn(value), {"If-Match": 'W/"1"'})
    assert stale.status_code == 412
    wrong_id = api.put(criteria, _with_mrn(value, id="someone-else"))
    assert wrong_id.status_code == 400
    assert fhir_valid(wrong_id.json())["issue"][0]["expression"] == ["Patient.id"]
    _created(api, _with_mrn(value))
    several = api.put(criteria, _with_mrn(value))
    assert several.status_code == 412
    assert "more than one" in several.json()["issue"][0]["diagnostics"]
    assert _current(cast.tenant_a, logical_id).version_id == 2


def test_conditional_update_without_a_match_takes_the_body_id_as_update_as_create(api, cast):
    value = _mrn()
    logical_id = f"mrn-{value}"
    criteria = f"Patient?identifier={MRN}|{value}"
    response = api.put(criteria, _with_mrn(value, id=logical_id))
    assert response.status_code == 201 and response.json()["id"] == logical_id
    other = _created(api, patient("Taken"))
    taken = api.put(f"Patient?identifier={MRN}|{_mrn()}", _with_mrn(value, id=other["id"]))
    assert taken.status_code == 409
    assert _current(cast.tenant_a, other["id"]).version_id == 1


def test_criteria_the_search_parser_refuses_are_its_400_and_change_nothing(api, cast):
    value = _mrn()
    for criteria in ("Patient?unknown-parameter=1", "Patient?birthdate=not-a-date", "Patient"):
        refused = api.put(criteria, _with_mrn(value))
        assert refused.status_code == 400, criteria
        assert fhir_valid(refused.json())["resourceType"] == "OperationOutcome"
    assert api.delete("Patient?birthdate=not-a-date").status_code == 400
    empty = api.send("PATCH", "Patient?", [], content_type=JSON_PATCH)
    assert empty.status_code == 400
    assert _count(cast.tenant_a, value) == 0


def test_conditional_delete_deletes_the_one_match_and_none_is_fine(api, cast):
    value = _mrn()
    created = _created(api, _with_mrn(value))
    assert api.delete(f"Patient?identifier={MRN}|{_mrn()}").status_code == 204
    response = api.delete(f"Patient?identifier={MRN}|{value}")
    assert response.status_code == 204 and response["ETag"] == 'W/"2"'
    assert api.get(f"Patient/{created['id']}").status_code == 410


def test_conditional_delete_of_several_is_412_unless_allowed_and_capped(
    api, cast, settings, monkeypatch
):
    value = _mrn()
    ids = [_created(api, _with_mrn(value))["id"] for _ in range(3)]
    criteria = f"Patient?identifier={MRN}|{value}"
    assert api.delete(criteria).status_code == 412
    settings.FHIR_CONDITIONAL_DELETE_MULTIPLE = True
    monkeypatch.setattr(services, "CONDITIONAL_DELETE_MAX", 2)
    capped = api.delete(criteria)
    assert capped.status_code == 412 and "more than 2" in capped.json()["issue"][0]["diagnostics"]
    assert _count(cast.tenant_a, value) == 3
    monkeypatch.setattr(services, "CONDITIONAL_DELETE_MAX", 3)
    assert api.delete(criteria).status_code == 204
    assert [api.get(f"Patient/{i}").status_code for i in ids] == [410, 410, 410]


def test_conditional_patch_patches_the_one_match(api, cast):
    value = _mrn()
    created = _created(api, _with_mrn(value))
    operations = [{"op": "replace", "path": "/gender", "value": "female"}]
    criteria = f"Patient?identifier={MRN}|{value}"
    patched = api.send("PATCH", criteria, operations, content_type=JSON_PATCH)
    assert patched.status_code == 200
    assert (patched.json()["id"], patched.json()["gender"]) == (created["id"], "female")
    missing = api.send(
        "PATCH", f"Patient?identifier={MRN}|{_mrn()}", operations, content_type=JSON_PATCH
    )
    assert missing.status_code == 404
    _created(api, _with_mrn(value))
    several = api.send("PATCH", criteria, operations, content_type=JSON_PATCH)
    assert several.status_code == 412
    assert _current(cast.tenant_a, created["id"]).version_id == 2


def test_the_match_needs_the_search_scope(cast, api):
    value = _mrn()
    _created(api, _with_mrn(value))
    no_search = FhirClient(cast.tenant_a.slug, cast.client_a.token("system/Patient.cud"))
    refused = no_search.delete(f"Patient?identifier={MRN}|{value}")
    assert refused.status_code == 403
    assert "system/Patient.s" in refused.json()["issue"][0]["diagnostics"]
    assert _count(cast.tenant_a, value) == 1


def test_bundle_entries_run_conditional_writes_through_the_same_rules(api, cast):
    kept, gone, patched = _mrn(), _mrn(), _mrn()
    for value in (kept, gone, patched):
        _created(api, _with_mrn(value))
    operations = [{"op": "replace", "path": "/gender", "value": "female"}]
    binary = {
        "resourceType": "Binary",
        "contentType": JSON_PATCH,
        "data": base64.b64encode(json.dumps(operations).encode()).decode(),
    }
    fresh = _mrn()

    def entry(method: str, value: str, resource: Any = None) -> dict[str, Any]:
        url = f"Patient?identifier={MRN}|{value}"
        return {"request": {"method": method, "url": url}} | (
            {"resource": resource} if resource else {}
        )

    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            entry("PUT", kept, _with_mrn(kept, gender="other")),
            entry("PUT", fresh, _with_mrn(fresh)),
            entry("DELETE", gone),
            entry("PATCH", patched, binary),
        ],
    }
    response = api.post("", bundle)
    assert response.status_code == 200, response.content
    statuses = [e["response"]["status"] for e in response.json()["entry"]]
    assert statuses == ["200 OK", "201 Created", "204 No Content", "200 OK"]
    assert (_count(cast.tenant_a, gone), _count(cast.tenant_a, fresh)) == (0, 1)
    _created(api, _with_mrn(kept))
    batch = bundle | {"type": "batch", "entry": [entry("PUT", kept, _with_mrn(kept))]}
    several = api.post("", batch).json()["entry"][0]["response"]
    assert several["status"] == "412"


def test_a_conditional_delete_is_audited_with_the_patients_it_touched(api, cast):
    subject = f"p-{_mrn()}"
    obs = _created(api, observation(f"Patient/{subject}"))
    response = api.delete(f"Observation?subject=Patient/{subject}")
    assert response.status_code == 204
    with tenant_schema(cast.tenant_a):
        event = AuditEvent.objects.get(request_id=response["X-Request-ID"])
    assert (event.interaction, event.resource_type, event.resource_id) == (
        "delete",
        "Observation",
        obs["id"],
    )
    assert event.patients == [subject]


def test_the_other_tenant_cannot(api, cast):
    value = _mrn()
    created = _created(api, _with_mrn(value))
    stranger = FhirClient(cast.tenant_a.slug, cast.client_b.token())
    assert stranger.delete(f"Patient?identifier={MRN}|{value}").status_code == 404
    own_b = FhirClient(cast.tenant_b.slug, cast.client_b.token())
    # On its own base, B's criteria never reach A's data: nothing matches, nothing changes.
    assert own_b.delete(f"Patient?identifier={MRN}|{value}").status_code == 204
    assert _current(cast.tenant_a, created["id"]).version_id == 1


def test_what_consent_denies_is_neither_matched_nor_touched(committed):
    world = consent_world(unique())
    world.policy()
    value = _mrn()
    denied = world.created(_with_mrn(value))
    assert world.writer.post("Consent", consent(denied["id"], DENY_ALL)).status_code == 201
    grant = client_create(
        partner_name=f"Conditional {value[:8]}",
        tenant_slugs=[world.tenant.slug],
        scopes="system/*.cruds",
    ).grants[0]
    generous_limits(grant)
    token = token_issue(grant=grant, scopes=scopes_parse(grant.scopes), auth_method="test")
    writer = FhirClient(world.tenant.slug, token.access_token)
    criteria = f"Patient?identifier={MRN}|{value}"
    assert writer.delete(criteria).status_code == 204
    patch = [{"op": "replace", "path": "/gender", "value": "female"}]
    assert writer.send("PATCH", criteria, patch, content_type=JSON_PATCH).status_code == 404
    assert _current(world.tenant, denied["id"]).version_id == 1
    assert not _current(world.tenant, denied["id"]).deleted


def test_the_loader_honours_if_none_exist(api, cast, tmp_path: Path):
    value = _mrn()
    existing = _created(api, _with_mrn(value))
    urn = f"urn:uuid:{uuid.uuid4()}"
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": urn,
                "resource": _with_mrn(value),
                "request": {
                    "method": "POST",
                    "url": "Patient",
                    "ifNoneExist": f"identifier={MRN}|{value}",
                },
            },
            {
                "resource": observation(urn),
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    path = tmp_path / "conditional.json"
    path.write_text(json.dumps(bundle))
    report = fhir_load_path(tenant=cast.tenant_a, path=path)
    assert report.failures == [] and dict(report.by_type) == {"Observation": 1}
    assert _count(cast.tenant_a, value) == 1
    with tenant_schema(cast.tenant_a):
        loaded = Resource.objects.filter(
            resource_type="Observation",
            content__subject__reference=f"Patient/{existing['id']}",
        )
        assert loaded.count() == 1
    first: dict[str, Any] = bundle["entry"][0]
    refused = {"method": "POST", "url": "Patient", "ifNoneExist": "nope=1"}
    bad = bundle | {"entry": [first | {"request": refused}]}
    path.write_text(json.dumps(bad))
    failed = fhir_load_path(tenant=cast.tenant_a, path=path)
    assert len(failed.failures) == 1 and "ifNoneExist" in failed.failures[0]
