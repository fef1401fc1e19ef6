"""Exports are consent-filtered: a patient who denies the client is left out with every
resource of their compartment; the manifest's error file gives counts, never ids."""

import json

from fhirplatform.fhir.models import Resource
from fhirplatform.schemas import tenant_schema
from tests.consent.enforcement_support import DENY_ALL, client_actor, consent
from tests.fhir.export.export_support import ExportWorld, download, exported, lines, run_export


def test_a_denying_patient_is_left_out_and_counted(live: ExportWorld) -> None:
    with tenant_schema(live.tenant):
        patient_id = (
            Resource.objects.filter(resource_type="Patient")
            .order_by("pk")
            .values_list("logical_id", flat=True)[0]
        )
        theirs = Resource.objects.filter(deleted=False, compartment__contains=[patient_id])
        denied: dict[str, int] = {}
        for resource_type in theirs.values_list("resource_type", flat=True):
            denied[resource_type] = denied.get(resource_type, 0) + 1
    provision = {
        "type": "permit",
        "provision": [{**DENY_ALL, "actor": client_actor(live.reader.client.client_id)}],
    }
    live.created(consent(patient_id, provision))
    denied["Consent"] = denied.get("Consent", 0) + 1  # the Consent is in their compartment

    token = live.token()
    manifest = run_export(live, token)
    by_type = exported(manifest, token)
    everything = [r for resources in by_type.values() for r in resources]
    assert all(patient_id not in json.dumps(r) for r in everything)
    stored = live.stored_counts()
    assert {t: len(rs) for t, rs in by_type.items()} == {
        t: n - denied.get(t, 0) for t, n in stored.items() if n - denied.get(t, 0)
    }

    [error] = manifest["error"]
    outcomes = lines(download(error["url"], token))
    assert patient_id not in json.dumps(outcomes)
    counted = {
        o["issue"][0]["diagnostics"].split(" ")[1]: int(o["issue"][0]["diagnostics"].split(" ")[0])
        for o in outcomes
    }
    assert counted == denied


def test_a_group_with_a_denying_member_exports_the_others(live: ExportWorld) -> None:
    """A Group is in each member's compartment, so a denying member hides it from reads;
    its export still runs, leaving that member out."""
    with tenant_schema(live.tenant):
        ids = list(
            Resource.objects.filter(resource_type="Patient")
            .order_by("pk")
            .values_list("logical_id", flat=True)[:2]
        )
    other = ids[1]  # the first patient denies the reader (the test above)
    group = live.group(ids)
    token = live.token()
    assert live.writer.get(f"Group/{group['id']}").status_code == 200
    manifest = run_export(live, token, f"Group/{group['id']}/$export", params={"_type": "Patient"})
    patients = exported(manifest, token)["Patient"]
    assert [p["id"] for p in patients] == [other]
    assert manifest["error"]
