"""A search whose criterion names its patients stands on their generations, not its type's:
a write for another patient leaves it cached; a write for one of them, a resource moved
into or out of their compartment, or a delete, reaches it at once."""

from typing import Any

import pytest

from fhirplatform.fhir.compartments import criterion_patients
from fhirplatform.fhir.search.parsing import search_parse
from fhirplatform.fhir.search.selectors import _patients_scoping
from tests.consent.enforcement_support import ConsentWorld, observation

BASE = "http://testserver/fhir/t"


def _scope(query: list[tuple[str, str]], resource_type: str = "Observation") -> Any:
    request = search_parse(resource_type=resource_type, params=query, strict=True)
    return _patients_scoping(request, BASE)


@pytest.mark.parametrize(
    ("query", "patients"),
    [
        ([("patient", "p1")], ["p1"]),
        ([("patient", "Patient/p1")], ["p1"]),
        ([("patient", f"{BASE}/Patient/p1")], ["p1"]),
        ([("patient", "p2,p1,p1")], ["p1", "p2"]),
        ([("subject", "Patient/p1")], ["p1"]),
        ([("subject:Patient", "p1")], ["p1"]),
        ([("performer", "Patient/p1")], ["p1"]),
        ([("code", "8867-4"), ("patient", "p1")], ["p1"]),
        # A bare id of a parameter that may mean another type: a Group p1 would match too.
        ([("subject", "p1")], None),
        ([("subject", "Group/g1")], None),
        ([("patient", "p1,Group/g1")], None),
        ([("patient:missing", "false")], None),
        ([("patient:identifier", "urn:x|1")], None),
        ([("subject", "http://elsewhere.example/Patient/p1")], None),
        ([("code", "8867-4")], None),
        # What else the search reads of its own type still stands on the type.
        ([("patient", "p1"), ("_revinclude", "Observation:has-member")], None),
        ([("patient", "p1"), ("_include", "Observation:has-member")], None),
    ],
)
def test_which_criteria_scope_a_search_to_its_patients(query, patients):
    scope = _scope(query)
    assert (scope and scope.patients) == patients
    if scope is not None:
        assert scope.resource_type == "Observation"


def test_a_parameter_outside_the_compartment_never_scopes():
    # Observation.focus may hold a Patient reference, but does not put it in a compartment.
    parameter = _scope([("focus", "Patient/p1")])
    assert parameter is None
    assert (
        criterion_patients(
            resource_type="Organization",
            parameter=None,
            modifier=None,
            values=("p1",),
            base_url=BASE,
        )
        is None
    )


def _patient(world: ConsentWorld, family: str) -> str:
    return str(world.created({"resourceType": "Patient", "name": [{"family": family}]})["id"])


def test_writes_reach_exactly_the_searches_of_their_patients(world, committed):
    world.policy()
    reader = world.client(world.reader)
    mine, other = _patient(world, "Mine"), _patient(world, "Other")
    kept = world.created(observation(mine))
    moving = world.created(observation(other))

    def search(patient_id: str, by: str = "patient") -> tuple[str, list[str]]:
        response = reader.get("Observation", **{by: patient_id})
        assert response.status_code == 200, response.content
        ids = [e["resource"]["id"] for e in response.json().get("entry", [])]
        return response["X-Cache"], sorted(ids)

    assert search(mine) == ("MISS", [kept["id"]])
    assert search(mine) == ("HIT", [kept["id"]])

    world.created(observation(other))  # another patient's write
    assert search(mine) == ("HIT", [kept["id"]])

    moved = {**moving, "subject": {"reference": f"Patient/{mine}"}}
    assert world.writer.put(f"Observation/{moving['id']}", moved).status_code == 200
    assert search(mine) == ("MISS", sorted([kept["id"], moving["id"]]))

    assert world.writer.put(f"Observation/{moving['id']}", moving).status_code == 200
    assert search(mine) == ("MISS", [kept["id"]])

    assert world.writer.delete(f"Observation/{kept['id']}").status_code in (200, 204)
    assert search(mine) == ("MISS", [])

    # Not scoped (a bare subject id may be a Group's): any Observation write reaches it.
    assert search(mine, by="subject")[0] == "MISS"
    assert search(mine, by="subject")[0] == "HIT"
    world.created(observation(other))
    assert search(mine, by="subject")[0] == "MISS"
