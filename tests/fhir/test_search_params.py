"""Search parameter types, modifiers and prefixes, answered from the index tables."""

import uuid
from datetime import UTC, datetime
from functools import partial
from typing import Any
from urllib.parse import quote

import pytest

from fhirplatform.errors import FhirError
from fhirplatform.fhir.search.models import DateIndex, ReferenceIndex, StringIndex, TokenIndex
from fhirplatform.fhir.search.services import index_remove
from fhirplatform.schemas import schema_public
from tests.fhir.search_support import (
    TAG_SYSTEM,
    caller_for,
    ids,
    in_tenant,
    public_schema_after,  # noqa: F401 - autouse fixture
    search,
)
from tests.fhir.search_support import stored as stored_any

LOINC = "http://loinc.org"
MRN = "http://hospital.example/mrn"


def observation(
    patient: str,
    code: str,
    when: str,
    value: float,
    status: str = "final",
    category: str = "vital-signs",
) -> dict[str, Any]:
    return {
        "status": status,
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": category,
                    }
                ]
            }
        ],
        "code": {
            "coding": [{"system": LOINC, "code": code, "display": "Body weight"}],
            "text": "Body weight",
        },
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": when,
        "valueQuantity": {
            "value": value,
            "unit": "kg",
            "system": "http://unitsofmeasure.org",
            "code": "kg",
        },
    }


@pytest.fixture
def world(db: None, cast: Any) -> dict[str, Any]:
    """A few patients and observations, tagged so that queries see only them (other test
    modules commit resources into the same tenant)."""
    in_tenant(cast.tenant_a)
    tag = uuid.uuid4().hex
    stored = partial(stored_any, tag=tag)
    muller = stored(
        "Patient",
        {
            "identifier": [{"system": MRN, "value": "M-1"}],
            "name": [{"family": "Müller", "given": ["Anna", "Maria"]}],
            "gender": "female",
            "birthDate": "1980-02-15",
            "active": True,
            "address": [{"city": "Zürich", "postalCode": "8001"}],
        },
    )
    miller = stored(
        "Patient",
        {
            "identifier": [{"system": MRN, "value": "M-2"}, {"system": "urn:other", "value": "X"}],
            "name": [{"family": "Miller", "given": ["Bob"]}],
            "gender": "male",
            "birthDate": "1975",
        },
    )
    nameless = stored("Patient", {"gender": "unknown"})
    pid = muller.logical_id
    obs = [
        stored("Observation", observation(pid, "29463-7", "2020-01-10T08:00:00Z", 70.0)),
        stored("Observation", observation(pid, "29463-7", "2020-03-05T08:00:00+02:00", 71.5)),
        stored("Observation", observation(pid, "8302-2", "2021-06-01", 180, category="exam")),
        stored(
            "Observation",
            observation(miller.logical_id, "29463-7", "2020-01-10T09:00:00Z", 90, status="amended"),
        ),
    ]
    return {
        "muller": muller,
        "miller": miller,
        "nameless": nameless,
        "obs": obs,
        "caller": caller_for(cast.client_a, cast.tenant_a),
        "tag": tag,
    }


def tagged(world: dict[str, Any], query: str) -> str:
    return f"{query}&_tag={TAG_SYSTEM}|{world['tag']}"


def find(world: dict[str, Any], resource_type: str, query: str, **kw: Any) -> dict[str, Any]:
    return search(world["caller"], resource_type, tagged(world, query), **kw)


def run(world: dict[str, Any], resource_type: str, query: str, **kw: Any) -> list[str]:
    return sorted(ids(find(world, resource_type, query, **kw)))


def lids(*resources: Any) -> list[str]:
    return sorted(r.logical_id for r in resources)


def test_index_rows_are_typed_and_one_per_value(world: dict[str, Any]) -> None:
    muller = world["muller"]
    given = StringIndex.objects.filter(resource=muller, param="given")
    assert sorted(given.values_list("value", flat=True)) == ["anna", "maria"]
    assert StringIndex.objects.get(resource=muller, param="family").value == "muller"
    birth = DateIndex.objects.get(resource=muller, param="birthdate")
    assert (birth.low, birth.high) == (
        datetime(1980, 2, 15, tzinfo=UTC),
        datetime(1980, 2, 16, tzinfo=UTC),
    )
    assert TokenIndex.objects.filter(resource=world["miller"], param="identifier").count() == 2
    ref = ReferenceIndex.objects.get(resource=world["obs"][0], param="patient")
    assert (ref.target_type, ref.target_id) == ("Patient", muller.logical_id)
    index_remove(resource=muller)
    assert not StringIndex.objects.filter(resource=muller).exists()


def test_string_default_is_prefix_and_accent_insensitive(world: dict[str, Any]) -> None:
    assert run(world, "Patient", "family=mull") == lids(world["muller"])
    assert run(world, "Patient", "family=MÜLLER") == lids(world["muller"])
    assert run(world, "Patient", "family=M") == lids(world["muller"], world["miller"])
    assert run(world, "Patient", "name=bob") == lids(world["miller"])
    assert run(world, "Patient", "given=mar") == lids(world["muller"])
    assert run(world, "Patient", "address-city=zur") == lids(world["muller"])


def test_string_exact_and_contains(world: dict[str, Any]) -> None:
    assert run(world, "Patient", "family:exact=Müller") == lids(world["muller"])
    assert run(world, "Patient", "family:exact=müller") == []
    assert run(world, "Patient", "family:exact=Mull") == []
    assert run(world, "Patient", "family:contains=ll") == lids(world["muller"], world["miller"])
    assert run(world, "Patient", "family:contains=ULL") == lids(world["muller"])


def test_token_forms_and_not(world: dict[str, Any]) -> None:
    assert run(world, "Patient", "gender=female") == lids(world["muller"])
    assert run(world, "Patient", f"identifier={MRN}|M-2") == lids(world["miller"])
    assert run(world, "Patient", "identifier=|M-2") == []  # M-2 has a system
    assert run(world, "Patient", "identifier=urn:other|") == lids(world["miller"])
    assert run(world, "Patient", "identifier=M-1") == lids(world["muller"])
    assert run(world, "Patient", "gender:not=female") == lids(world["miller"], world["nameless"])
    assert run(world, "Patient", "active=true") == lids(world["muller"])
    obs = world["obs"]
    assert run(world, "Observation", f"code={LOINC}|29463-7") == lids(obs[0], obs[1], obs[3])
    assert run(world, "Observation", "code:text=body") == lids(*obs)
    assert run(world, "Observation", "category=exam") == lids(obs[2])


def test_comma_is_or_and_repetition_is_and(world: dict[str, Any]) -> None:
    assert run(world, "Patient", "gender=female,male") == lids(world["muller"], world["miller"])
    assert run(world, "Patient", "family=mü&given=bob") == []
    assert run(world, "Patient", "given=anna&given=maria") == lids(world["muller"])


def test_date_prefixes_and_partial_dates(world: dict[str, Any]) -> None:
    m, b = world["muller"], world["miller"]
    assert run(world, "Patient", "birthdate=1980") == lids(m)
    assert run(world, "Patient", "birthdate=1980-02") == lids(m)
    assert run(world, "Patient", "birthdate=1980-02-15") == lids(m)
    assert run(world, "Patient", "birthdate=1975-06-01") == []  # 1975 is wider than the day
    assert run(world, "Patient", "birthdate=ne1980-02-15") == lids(b)
    assert run(world, "Patient", "birthdate=lt1976") == lids(b)
    assert run(world, "Patient", "birthdate=gt1979-12-31") == lids(m)
    assert run(world, "Patient", "birthdate=ge1975-06-01") == lids(m, b)  # 1975 overlaps
    assert run(world, "Patient", "birthdate=le1975-06-01") == lids(b)
    assert run(world, "Patient", "birthdate=sa1975-12-31") == lids(m)
    assert run(world, "Patient", "birthdate=eb1980-01-01") == lids(b)
    obs = world["obs"]
    # 2020-03-05T08:00+02:00 is 06:00 UTC: zones are honoured.
    assert run(world, "Observation", "date=2020-03-05T06:00:00Z") == lids(obs[1])
    assert run(world, "Observation", "date=ge2020-02-01&date=lt2021") == lids(obs[1])
    assert run(world, "Observation", "date=2020-01-10") == lids(obs[0], obs[3])


def test_quantity_and_number_prefixes(world: dict[str, Any]) -> None:
    obs = world["obs"]
    assert run(world, "Observation", "value-quantity=70") == lids(obs[0])
    assert run(world, "Observation", "value-quantity=71.5|http://unitsofmeasure.org|kg") == lids(
        obs[1]
    )
    assert run(world, "Observation", "value-quantity=71.5||kg") == lids(obs[1])
    assert run(world, "Observation", "value-quantity=71.5||g") == []
    assert run(world, "Observation", "value-quantity=gt80") == lids(obs[2], obs[3])
    assert run(world, "Observation", "value-quantity=le71.5") == lids(obs[0], obs[1])
    assert run(world, "Observation", "value-quantity=7e1") == lids(obs[0], obs[1])  # 70 ± 5


def test_reference_forms(world: dict[str, Any]) -> None:
    m = world["muller"].logical_id
    obs = world["obs"]
    mine = lids(obs[0], obs[1], obs[2])
    assert run(world, "Observation", f"patient=Patient/{m}") == mine
    assert run(world, "Observation", f"patient={m}") == mine
    assert run(world, "Observation", f"subject:Patient={m}") == mine
    assert (
        run(world, "Observation", f"subject=http://testserver/fhir/provider-a/Patient/{m}") == mine
    )
    assert run(world, "Observation", f"subject:Device={m}") == []


def test_chained_parameters(world: dict[str, Any]) -> None:
    obs = world["obs"]
    assert run(world, "Observation", "subject:Patient.family=mül") == lids(obs[0], obs[1], obs[2])
    assert run(world, "Observation", "patient.gender=male") == lids(obs[3])
    assert run(world, "Observation", f"patient.identifier={MRN}|M-1&code=8302-2") == lids(obs[2])
    assert run(world, "Observation", "patient.birthdate=lt1900") == []
    with pytest.raises(FhirError) as unknown:
        find(world, "Observation", "patient.shoe-size=12", strict=True)
    assert unknown.value.issues[0].expression == ["patient.shoe-size"]
    with pytest.raises(FhirError):
        find(world, "Observation", "patient.birthdate=notadate")


def test_missing(world: dict[str, Any]) -> None:
    assert run(world, "Patient", "name:missing=true") == lids(world["nameless"])
    assert run(world, "Patient", "birthdate:missing=false") == lids(
        world["muller"], world["miller"]
    )


def test_common_id_and_last_updated(world: dict[str, Any]) -> None:
    m, b = world["muller"], world["miller"]
    assert run(world, "Patient", f"_id={m.logical_id},{b.logical_id}") == lids(m, b)
    stamp = quote(m.last_updated.isoformat())
    assert world["muller"].logical_id in run(world, "Patient", f"_lastUpdated=ge{stamp}")
    assert world["muller"].logical_id not in run(world, "Patient", f"_lastUpdated=gt{stamp}")
    assert run(world, "Patient", "_lastUpdated=lt2000-01-01") == []


def test_sort_by_date_string_token_and_id(world: dict[str, Any]) -> None:
    obs = world["obs"]
    bundle = find(world, "Observation", "_sort=-date")
    assert ids(bundle) == [
        obs[2].logical_id,
        obs[1].logical_id,
        obs[3].logical_id,
        obs[0].logical_id,
    ]
    families = ids(find(world, "Patient", "_sort=family"))
    assert families == [
        world["miller"].logical_id,
        world["muller"].logical_id,
        world["nameless"].logical_id,
    ]
    genders = ids(find(world, "Patient", "_sort=-gender"))
    assert genders == [
        world["nameless"].logical_id,
        world["miller"].logical_id,
        world["muller"].logical_id,
    ]
    assert ids(find(world, "Patient", "_sort=_id")) == lids(
        world["muller"], world["miller"], world["nameless"]
    )


def test_summary_count_elements_and_total(world: dict[str, Any]) -> None:
    counted = find(world, "Observation", "code=29463-7&_summary=count")
    assert counted["total"] == 3 and "entry" not in counted
    zero = find(world, "Observation", "code=29463-7&_count=0")
    assert zero["total"] == 3 and "entry" not in zero
    shaped = find(world, "Patient", "gender=female&_elements=gender")
    resource = shaped["entry"][0]["resource"]
    assert set(resource) == {"resourceType", "id", "meta", "gender"}
    assert any(tag["code"] == "SUBSETTED" for tag in resource["meta"]["tag"])
    assert shaped["total"] == 1


def test_include_and_revinclude(world: dict[str, Any]) -> None:
    m = world["muller"].logical_id
    bundle = find(world, "Observation", f"patient={m}&code=8302-2&_include=Observation:patient")
    assert ids(bundle) == [world["obs"][2].logical_id]
    assert ids(bundle, "include") == [m]
    reverse = find(world, "Patient", f"_id={m}&_revinclude=Observation:subject")
    assert ids(reverse) == [m]
    assert sorted(ids(reverse, "include")) == lids(*world["obs"][:3])


def test_include_respects_scopes(world: dict[str, Any], cast: Any) -> None:
    narrow = caller_for(cast.client_a, cast.tenant_a, "system/Observation.rs")
    bundle = search(narrow, "Observation", "code=8302-2&_include=Observation:patient")
    assert ids(bundle) and ids(bundle, "include") == []


def test_unknown_parameters_strict_and_lenient(world: dict[str, Any]) -> None:
    with pytest.raises(FhirError) as failure:
        find(world, "Patient", "gender=female&shoe-size=12&color=red", strict=True)
    assert failure.value.status == 400
    assert [i.expression for i in failure.value.issues] == [["shoe-size"], ["color"]]
    lenient = find(world, "Patient", "gender=female&shoe-size=12")
    assert ids(lenient) == [world["muller"].logical_id]
    self_link = next(li["url"] for li in lenient["link"] if li["relation"] == "self")
    assert "gender=female" in self_link and "shoe-size" not in self_link
    outcome = [e for e in lenient["entry"] if e["search"]["mode"] == "outcome"]
    assert outcome and outcome[0]["resource"]["issue"][0]["expression"] == ["shoe-size"]


@pytest.mark.parametrize(
    ("resource_type", "query", "named"),
    [
        ("Patient", "birthdate=1980-13-45", "birthdate"),
        ("Patient", "birthdate=xx1980", "birthdate"),
        ("Patient", "birthdate=tomorrow", "birthdate"),
        ("Patient", "gender:exact=female", "gender:exact"),
        ("Patient", "family:fuzzy=x", "family:fuzzy"),
        ("Patient", "name:missing=maybe", "name:missing"),
        ("Observation", "value-quantity=heavy", "value-quantity"),
        ("Observation", "value-quantity=5|kg", "value-quantity"),
        ("Observation", "subject:Medication=1", "subject:Medication"),
        ("Observation", "value-quantity=NaN", "value-quantity"),
        ("Observation", "date=ge2020-01-01T25:00:00Z", "date"),
        ("Observation", "patient=Patient/", "patient"),
        ("Observation", "code:below=x", "code:below"),
        ("Patient", "_count=-1", "_count"),
        ("Patient", "_count=ten", "_count"),
        ("Patient", "_sort=shoe-size", "_sort"),
        ("Patient", "_sort=link", "_sort"),
        ("Patient", "_include=Observation:patient", "_include"),
        ("Patient", "_include=Patient:name", "_include"),
        ("Patient", "_summary=maybe", "_summary"),
        ("Patient", "_lastUpdated=2020-99", "_lastUpdated"),
        ("Patient", "identifier=|", "identifier"),
        ("Patient", "_cursor=forged", "_cursor"),
    ],
)
def test_bad_values_give_400_naming_the_parameter(
    world: dict[str, Any], resource_type: str, query: str, named: str
) -> None:
    with pytest.raises(FhirError) as failure:
        search(world["caller"], resource_type, query)
    assert failure.value.status == 400
    outcome = failure.value.outcome()
    assert outcome["resourceType"] == "OperationOutcome"
    issue = outcome["issue"][0]
    assert named in issue.get("expression", []) or named in issue["diagnostics"]


def test_an_id_no_resource_can_have_matches_nothing_unless_handling_is_strict(
    world: dict[str, Any],
) -> None:
    assert search(world["caller"], "Patient", "_id=a b").get("entry", []) == []
    assert search(world["caller"], "Patient", "_id=a b")["total"] == 0
    with pytest.raises(FhirError) as failure:
        search(world["caller"], "Patient", "_id=a b", strict=True)
    assert failure.value.status == 400 and failure.value.outcome()["issue"][0]["expression"] == [
        "_id"
    ]


def test_count_above_the_cap_is_refused_and_the_default_said_in_self_link(
    world: dict[str, Any],
) -> None:
    with pytest.raises(FhirError) as refused:
        find(world, "Patient", "_count=5000")
    assert refused.value.status == 400
    assert "_count=1000" in find(world, "Patient", "_count=1000")["link"][0]["url"]
    assert "_count=50" in find(world, "Patient", "")["link"][0]["url"]


def test_system_search_across_types(world: dict[str, Any]) -> None:
    caller = world["caller"]
    m = world["muller"].logical_id
    bundle = search(caller, None, f"_type=Patient,Observation&_id={m}")
    assert ids(bundle) == [m]
    with pytest.raises(FhirError):
        search(caller, None, "_id=x")  # no _type


def test_other_tenant_sees_none_of_it(world: dict[str, Any], cast: Any) -> None:
    in_tenant(cast.tenant_b)
    caller_b = caller_for(cast.client_b, cast.tenant_b)
    m = world["muller"].logical_id
    assert ids(search(caller_b, "Patient", "family=mü")) == []
    assert ids(search(caller_b, "Observation", f"patient={m}&_include=Observation:patient")) == []
    assert search(caller_b, "Patient", f"_id={m}&_summary=count")["total"] == 0
    assert (
        search(caller_b, "Patient", f"_id={m}&_revinclude=Observation:subject").get("entry") is None
    )
    schema_public()
