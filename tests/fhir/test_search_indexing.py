"""Indexing on write: the registry, the expression evaluator, and the store keeping index
rows in step with every create, update and delete."""

import gzip
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from fhirplatform.fhir import services
from fhirplatform.fhir.search.extract import _compiled, _plan, resource_values
from fhirplatform.fhir.search.models import DateIndex, StringIndex, TokenIndex
from fhirplatform.fhir.search.registry import ParamType, search_parameter, search_parameters_for
from fhirplatform.fhir.search.values import date_range
from tests.fhir.search_support import (
    caller_for,
    ids,
    in_tenant,
    public_schema_after,  # noqa: F401 - autouse fixture
    search,
)

SYNTHEA = Path(__file__).resolve().parents[3] / "shared" / "data" / "synthea-r4"


def synthea_resources(files: int) -> list[dict[str, Any]]:
    paths = sorted(SYNTHEA.glob("*.json.gz"))[:files]
    if not paths:
        pytest.skip("Synthea sample data not present")
    resources = []
    for path in paths:
        with gzip.open(path) as compressed:
            entries = json.loads(compressed.read())["entry"]
        # What the store does with a transaction: urn:uuid references become Type/id.
        local = {
            e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in entries
        }
        text = json.dumps([e["resource"] for e in entries])
        for urn, reference in local.items():
            text = text.replace(f'"{urn}"', f'"{reference}"')
        resources.extend(json.loads(text))
    return resources


def test_registry_covers_every_type_from_the_specification() -> None:
    patient = {p.name: p for p in search_parameters_for("Patient")}
    for name in (
        "identifier",
        "name",
        "family",
        "given",
        "birthdate",
        "gender",
        "_id",
        "_lastUpdated",
    ):
        assert name in patient
    assert (
        patient["birthdate"].definition
        == "http://hl7.org/fhir/SearchParameter/individual-birthdate"
    )
    observation = {p.name for p in search_parameters_for("Observation")}
    assert {
        "patient",
        "subject",
        "code",
        "category",
        "date",
        "status",
        "value-quantity",
    } <= observation
    assert search_parameter("Observation", "patient").targets == ("Patient",)  # type: ignore[union-attr]
    # Types beyond the usual: Claim, ExplanationOfBenefit, ImagingStudy carry their own.
    assert search_parameter("ExplanationOfBenefit", "patient") is not None
    assert search_parameter("ImagingStudy", "modality").type is ParamType.TOKEN  # type: ignore[union-attr]


def test_partial_dates_are_ranges() -> None:
    year = date_range("2020")
    assert year is not None and (year.low.isoformat(), year.high.isoformat()) == (
        "2020-01-01T00:00:00+00:00",
        "2021-01-01T00:00:00+00:00",
    )
    december = date_range("2020-12")
    assert december is not None and december.high.isoformat() == "2021-01-01T00:00:00+00:00"
    instant = date_range("2020-05-01T10:00:00.123+02:00")
    assert instant is not None and instant.low.isoformat() == "2020-05-01T08:00:00.123000+00:00"
    assert date_range("2020-02-30") is None and date_range("yesterday") is None


def _plain(value: Any) -> Any:
    return json.loads(
        json.dumps(value, default=lambda v: float(v) if isinstance(v, Decimal) else str(v))
    )


def test_direct_navigation_agrees_with_fhirpathpy_on_synthea() -> None:
    """The fast evaluator for plain paths must give what fhirpathpy gives."""
    checked = 0
    for resource in synthea_resources(3):
        for step in _plan(resource["resourceType"]):
            try:
                expected = _compiled(resource["resourceType"], step.path.expression)(resource)
            except Exception:  # noqa: S112 - fhirpathpy rejects some; those index nothing
                continue
            assert _plain(step.evaluate(resource)) == _plain(expected), step.path.expression
            checked += 1
    assert checked > 1000


def test_every_synthea_resource_indexes() -> None:
    resources = synthea_resources(2)
    types = {r["resourceType"] for r in resources}
    assert {"Claim", "ExplanationOfBenefit", "Observation", "Encounter"} <= types
    for resource in resources:
        values = list(resource_values(resource_type=resource["resourceType"], content=resource))
        if resource["resourceType"] in ("Observation", "Encounter", "Claim", "Condition"):
            assert any(p.name == "patient" for p, _ in values), resource["resourceType"]


@pytest.fixture
def tenant_a(db: None, cast: Any) -> Any:
    in_tenant(cast.tenant_a)
    return caller_for(cast.client_a, cast.tenant_a)


def test_store_writes_keep_the_index_current(tenant_a: Any) -> None:
    created = services.resource_create(
        resource_type="Patient",
        source="test",
        content={
            "resourceType": "Patient",
            "name": [{"family": "Before"}],
            "birthDate": "1960-01-01",
        },
    )
    assert ids(search(tenant_a, "Patient", "family=before")) == [created.logical_id]
    services.resource_update(
        resource_type="Patient",
        logical_id=created.logical_id,
        source="test",
        content={
            "resourceType": "Patient",
            "id": created.logical_id,
            "name": [{"family": "After"}],
        },
    )
    assert ids(search(tenant_a, "Patient", "family=before")) == []
    assert ids(search(tenant_a, "Patient", "family=after")) == [created.logical_id]
    assert not DateIndex.objects.filter(resource_id=created.pk).exists()  # birthDate removed
    services.resource_delete(resource_type="Patient", logical_id=created.logical_id)
    assert ids(search(tenant_a, "Patient", "family=after")) == []
    assert not StringIndex.objects.filter(resource_id=created.pk).exists()
    assert not TokenIndex.objects.filter(resource_id=created.pk).exists()


def test_other_tenant_index_is_separate(tenant_a: Any, cast: Any) -> None:
    services.resource_create(
        resource_type="Patient",
        source="test",
        content={"resourceType": "Patient", "name": [{"family": "Onlyina"}]},
    )
    in_tenant(cast.tenant_b)
    assert not StringIndex.objects.filter(value="onlyina").exists()
    assert ids(search(caller_for(cast.client_b, cast.tenant_b), "Patient", "family=onlyina")) == []
