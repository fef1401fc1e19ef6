"""Consent enforced through the FHIR API: read, vread, history, search (totals, paging,
_include), Bundles, the denied answer, purposes, explicit labels, and the response cache's
keys (a cached answer of one caller is never another's)."""

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from consent.codes import CONSENT_REASON, DeniedAnswer, Effect
from tenants.services import client_create
from tests.consent.enforcement_support import (
    ConsentWorld,
    client_actor,
    consent,
    observation,
    partner_actor,
    unique,
)
from tests.fhir.rest_support import generous_limits


@pytest.fixture
def fresh(world: ConsentWorld, committed: None) -> ConsentWorld:
    """The world with the baseline policy (permit, nothing explicit)."""
    world.policy()
    return world


def _patient_with_data(world: ConsentWorld) -> tuple[str, str]:
    patient = world.created({"resourceType": "Patient", "name": [{"family": "Consenting"}]})
    obs = world.created(observation(patient["id"]))
    return patient["id"], obs["id"]


def _deny_reader(world: ConsentWorld, patient_id: str) -> dict[str, Any]:
    return world.created(
        consent(
            patient_id,
            {
                "type": "permit",
                "provision": [
                    {"type": "deny", "actor": client_actor(world.reader.client.client_id)}
                ],
            },
        )
    )


def _public(response: Any) -> tuple[int, bytes, set[str]]:
    """What a caller can compare of two answers: status, body, header names."""
    names = {name.lower() for name in response.headers}
    return response.status_code, response.content, names


def test_a_deny_consent_hides_the_patient_from_that_client_only(fresh):
    patient_id, obs_id = _patient_with_data(fresh)
    reader, other = fresh.client(fresh.reader), fresh.client(fresh.other)
    assert reader.get(f"Observation/{obs_id}").status_code == 200
    _deny_reader(fresh, patient_id)

    denied = reader.get(f"Observation/{obs_id}")
    missing = reader.get("Observation/no-such-observation")
    assert _public(denied) == _public(missing)
    assert reader.get(f"Patient/{patient_id}").status_code == 404
    assert reader.get(f"Observation/{obs_id}/_history/1").status_code == 404
    assert reader.get(f"Observation/{obs_id}/_history").status_code == 404
    assert other.get(f"Observation/{obs_id}").status_code == 200


def test_search_leaves_denied_resources_out_of_the_page_and_the_total(fresh):
    denied_patient, _ = _patient_with_data(fresh)
    visible_patient, visible_obs = _patient_with_data(fresh)
    _deny_reader(fresh, denied_patient)
    reader = fresh.client(fresh.reader)

    both = f"{denied_patient},{visible_patient}"
    bundle = reader.get("Observation", subject=both, _total="accurate").json()
    assert [e["resource"]["id"] for e in bundle["entry"]] == [visible_obs]
    assert bundle["total"] == 1
    assert reader.get("Observation", subject=both, _summary="count").json()["total"] == 1
    # Paging one by one never reaches the denied one either.
    page = reader.get("Observation", subject=both, _count="1").json()
    assert len(page["entry"]) == 1 and not any(link["relation"] == "next" for link in page["link"])
    # _include does not bring the denied patient in through a permitted resource.
    included = reader.get("Observation", subject=both, _include="Observation:subject").json()
    ids = {e["resource"]["id"] for e in included["entry"]}
    assert denied_patient not in ids and visible_patient in ids
    other = fresh.client(fresh.other)
    assert other.get("Observation", subject=both, _total="accurate").json()["total"] == 2


def test_a_bundle_read_and_search_are_decided_like_rest(fresh):
    denied_patient, denied_obs = _patient_with_data(fresh)
    _deny_reader(fresh, denied_patient)
    reader = fresh.client(fresh.reader)
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"Observation/{denied_obs}"}},
            {"request": {"method": "GET", "url": f"Observation?subject={denied_patient}"}},
        ],
    }
    response = reader.post("", batch)
    assert response.status_code == 200, response.content
    read, search = response.json()["entry"]
    assert read["response"]["status"].startswith("404")
    assert search["resource"].get("total", 0) == 0 and "entry" not in search["resource"]


def test_a_partner_deny_and_a_tenant_default_deny(fresh):
    patient_id, obs_id = _patient_with_data(fresh)
    fresh.created(consent(patient_id, {"type": "deny", "actor": partner_actor(fresh.reader_slug)}))
    assert fresh.client(fresh.reader).get(f"Observation/{obs_id}").status_code == 404

    other_patient, other_obs = _patient_with_data(fresh)
    fresh.policy(default=Effect.DENY)
    other = fresh.client(fresh.other)
    assert other.get(f"Observation/{other_obs}").status_code == 404
    assert other.get("Observation", subject=other_patient, _total="accurate").json()["total"] == 0
    # A permit Consent naming the client opens its own patient, and no one else's.
    fresh.created(
        consent(
            other_patient, {"type": "permit", "actor": client_actor(fresh.other.client.client_id)}
        )
    )
    assert other.get(f"Observation/{other_obs}").status_code == 200
    assert fresh.client(fresh.reader).get(f"Observation/{other_obs}").status_code == 404


def test_the_policy_may_answer_403_with_the_consent_reason(fresh):
    patient_id, obs_id = _patient_with_data(fresh)
    _deny_reader(fresh, patient_id)
    fresh.policy(denied_answer=DeniedAnswer.FORBIDDEN)
    response = fresh.client(fresh.reader).get(f"Observation/{obs_id}")
    assert response.status_code == 403
    issue = response.json()["issue"][0]
    assert issue["details"]["coding"][0]["code"] == CONSENT_REASON


def test_a_purpose_outside_the_allowed_set_sees_nothing(fresh):
    _, obs_id = _patient_with_data(fresh)
    fresh.policy(allowed_purposes=["TREAT"])
    assert (
        fresh.client(fresh.reader, purpose="TREAT").get(f"Observation/{obs_id}").status_code == 200
    )
    paying = fresh.client(fresh.reader, purpose="HPAYMT")
    assert paying.get(f"Observation/{obs_id}").status_code == 404
    assert paying.get("Observation", _total="accurate").json()["total"] == 0


def test_an_explicit_label_needs_a_permit_that_names_it(fresh):
    patient_id, _ = _patient_with_data(fresh)
    restricted = fresh.created(observation(patient_id, labels=("R",)))
    fresh.policy(explicit_labels=["R"])
    reader = fresh.client(fresh.reader)
    assert reader.get(f"Observation/{restricted['id']}").status_code == 404
    assert reader.get("Observation", subject=patient_id, _total="accurate").json()["total"] == 1
    fresh.created(
        consent(
            patient_id,
            {
                "type": "permit",
                "securityLabel": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                        "code": "R",
                    }
                ],
            },
        )
    )
    assert reader.get(f"Observation/{restricted['id']}").status_code == 200
    assert reader.get("Observation", subject=patient_id, _total="accurate").json()["total"] == 2


def test_a_cached_answer_is_never_another_callers(fresh):
    patient_id, obs_id = _patient_with_data(fresh)
    path = f"Observation/{obs_id}"
    reader = fresh.client(fresh.reader)
    assert reader.get(path)["X-Cache"] == "MISS"
    assert reader.get(path)["X-Cache"] == "HIT"
    # Another client, another purpose, narrower scopes: each its own entry.
    for caller in (
        fresh.client(fresh.other),
        fresh.client(fresh.reader, purpose="HPAYMT"),
        fresh.client(fresh.reader, scopes="system/Observation.rs"),
    ):
        assert caller.get(path)["X-Cache"] == "MISS"
    # A Consent denying the reader makes its cached answer unreachable at once.
    _deny_reader(fresh, patient_id)
    assert reader.get(path).status_code == 404
    # The patient's generation moved for every caller: the other client reads afresh.
    other = fresh.client(fresh.other).get(path)
    assert other.status_code == 200 and other["X-Cache"] == "MISS"


def test_a_write_to_the_resource_is_seen_at_once(fresh):
    _, obs_id = _patient_with_data(fresh)
    reader = fresh.client(fresh.reader)
    first = reader.get(f"Observation/{obs_id}")
    assert reader.get(f"Observation/{obs_id}")["X-Cache"] == "HIT"
    changed = first.json() | {"status": "amended"}
    assert fresh.writer.put(f"Observation/{obs_id}", changed).status_code == 200
    again = reader.get(f"Observation/{obs_id}")
    assert again["X-Cache"] == "MISS" and again.json()["status"] == "amended"
    assert again.json()["meta"]["versionId"] == "2"


def test_another_tenant_never_shares_an_entry(fresh, cast):
    _, obs_id = _patient_with_data(fresh)
    reader = fresh.client(fresh.reader)
    reader.get(f"Observation/{obs_id}")
    from tests.fhir.rest_support import FhirClient

    theirs = FhirClient(cast.tenant_b.slug, cast.client_b.token())
    assert theirs.get(f"Observation/{obs_id}").status_code == 404


def test_a_patch_is_decided_like_a_read_of_what_it_patches(fresh):
    patient_id, obs_id = _patient_with_data(fresh)
    editor = client_create(
        partner_name=f"Editors {unique()}",
        tenant_slugs=[fresh.tenant.slug],
        scopes="system/*.cruds",
        purposes=["TREAT"],
    ).grants[0]
    generous_limits(editor)
    denial = {"type": "deny", "actor": client_actor(editor.client.client_id)}
    fresh.created(consent(patient_id, denial))
    patch = [{"op": "replace", "path": "/status", "value": "amended"}]

    response = fresh.client(editor).send(
        "PATCH", f"Observation/{obs_id}", patch, content_type="application/json-patch+json"
    )

    assert response.status_code == 404
    assert fresh.writer.get(f"Observation/{obs_id}").json()["status"] == "final"


def test_a_search_reads_every_consented_patients_consents_in_one_statement(fresh):
    patients = [_patient_with_data(fresh)[0] for _ in range(3)]
    for patient_id in patients:
        _deny_reader(fresh, patient_id)
    reader = fresh.client(fresh.reader)

    with CaptureQueriesContext(connection) as captured:
        bundle = reader.get("Observation", subject=",".join(patients), _total="accurate")

    assert bundle.json()["total"] == 0
    texts = [query["sql"] for query in captured.captured_queries]
    assert sum("SELECT i.target_id, r.content" in text for text in texts) == 1
    assert not any("i.target_id = " in text for text in texts)  # no patient one by one
