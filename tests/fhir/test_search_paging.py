"""Keyset paging: every result exactly once in both directions, and page links that
replay only for the tenant and client that made them."""

import uuid
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

from fhirplatform.errors import FhirError
from tests.fhir.search_support import (
    caller_for,
    follow,
    ids,
    in_tenant,
    link,
    public_schema_after,  # noqa: F401 - autouse fixture
    search,
    stored_many,
)

RESULTS = 2500
PAGE = 300


@pytest.fixture
def many(db: None, cast: Any) -> dict[str, Any]:
    in_tenant(cast.tenant_a)
    # Codes unique to this run: other modules commit observations into the same tenant.
    run = uuid.uuid4().hex[:8]
    common, rare = f"common-{run}", f"rare-{run}"
    contents = [
        {
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": common if n % 5 else rare}]},
            "subject": {"reference": f"Patient/p{n % 40}"},
            # Many rows share a date, so ties must be broken by row id; some have none.
            **(
                {}
                if n % 7 == 3
                else {"effectiveDateTime": f"2021-{n % 12 + 1:02d}-{n % 28 + 1:02d}"}
            ),
            "valueQuantity": {
                "value": n % 97,
                "system": "http://unitsofmeasure.org",
                "code": "/min",
            },
        }
        for n in range(RESULTS)
    ]
    rows = stored_many("Observation", contents)
    return {
        "ids": [r.logical_id for r in rows],
        "caller": caller_for(cast.client_a, cast.tenant_a),
        "common": common,
        "rare": rare,
        "run": f"code={common},{rare}",
    }


def walk(
    caller: Any, query: str, relation: str, start: dict[str, Any] | None = None
) -> list[list[str]]:
    bundle = start or search(caller, "Observation", query)
    pages = [ids(bundle)]
    while (url := link(bundle, relation)) is not None:
        bundle = follow(caller, "Observation", url)
        pages.append(ids(bundle))
    return pages


@pytest.mark.parametrize(
    "sort",
    ["", "_sort=-date", "_sort=date", "_sort=_id", "_sort=-value-quantity", "_sort=-_lastUpdated"],
)
def test_every_result_exactly_once_forward_and_back(many: dict[str, Any], sort: str) -> None:
    caller = many["caller"]
    query = f"code={many['common']}&_count={PAGE}&{sort}"
    expected = {i for n, i in enumerate(many["ids"]) if n % 5}
    forward = walk(caller, query, "next")
    seen = [i for page in forward for i in page]
    assert len(seen) == len(expected) and set(seen) == expected
    assert all(len(page) == PAGE for page in forward[:-1])
    # From the last page back to the first: the same pages, in reverse.
    last_bundle = search(caller, "Observation", query)
    while (url := link(last_bundle, "next")) is not None:
        last_bundle = follow(caller, "Observation", url)
    backward = walk(caller, query, "previous", start=last_bundle)
    assert backward == list(reversed(forward))


def test_sort_order_holds_across_pages(many: dict[str, Any]) -> None:
    caller = many["caller"]
    forward = [
        i for page in walk(caller, f"{many['run']}&_count={PAGE}&_sort=-date", "next") for i in page
    ]
    position = {i: n for n, i in enumerate(many["ids"])}
    dated = [i for i in forward if position[i] % 7 != 3]
    undated = [i for i in forward if position[i] % 7 == 3]
    assert forward == dated + undated  # resources without a date come last
    dates = [f"{position[i] % 12 + 1:02d}-{position[i] % 28 + 1:02d}" for i in dated]
    assert dates == sorted(dates, reverse=True)
    assert undated == sorted(undated, key=lambda i: -position[i])  # then newest row first


def test_total_only_when_cheap_or_asked(many: dict[str, Any]) -> None:
    caller = many["caller"]
    mine = many["run"]
    assert "total" not in search(caller, "Observation", f"{mine}&_count={PAGE}")
    assert (
        search(caller, "Observation", f"{mine}&_count={PAGE}&_total=accurate")["total"] == RESULTS
    )
    assert search(caller, "Observation", f"{mine}&_summary=count")["total"] == RESULTS


def _refused_as_not_valid_here(error: FhirError) -> None:
    """The one answer to any cursor not valid for this caller and query (fhir/paging.py)."""
    assert error.status == 400
    issue = error.outcome()["issue"][0]
    assert issue["code"] == "invalid" and issue["expression"] == ["_cursor"]
    assert "not valid for this client or query" in issue["diagnostics"]


def test_page_link_of_another_tenant_or_client_is_refused(many: dict[str, Any], cast: Any) -> None:
    url = link(search(many["caller"], "Observation", f"{many['run']}&_count={PAGE}"), "next")
    assert url is not None
    in_tenant(cast.tenant_b)
    with pytest.raises(FhirError) as other_tenant:
        follow(caller_for(cast.client_b, cast.tenant_b), "Observation", url)
    _refused_as_not_valid_here(other_tenant.value)
    in_tenant(cast.tenant_a)
    # Same tenant, another client holding the link: the same answer.
    stranger = caller_for(cast.outsider, cast.tenant_a)
    with pytest.raises(FhirError) as other_client:
        follow(stranger, "Observation", url)
    _refused_as_not_valid_here(other_client.value)
    assert other_client.value.outcome() == other_tenant.value.outcome()


def test_page_link_is_tamper_proof_and_bound_to_its_search(many: dict[str, Any]) -> None:
    caller = many["caller"]
    url = link(search(caller, "Observation", f"code={many['common']}&_count={PAGE}"), "next")
    assert url is not None
    params = parse_qsl(urlsplit(url).query)
    cursor = dict(params)["_cursor"]
    forged = [(k, v if k != "_cursor" else cursor[:-3] + "abc") for k, v in params]
    with pytest.raises(FhirError) as tampered:
        search(caller, "Observation", urlencode(forged))
    _refused_as_not_valid_here(tampered.value)
    swapped = [(k, v if k != "code" else many["rare"]) for k, v in params]
    with pytest.raises(FhirError) as other_search:
        search(caller, "Observation", urlencode(swapped))
    _refused_as_not_valid_here(other_search.value)
    # The same criteria on another type, or at system level, are another search too.
    with pytest.raises(FhirError) as other_type:
        search(caller, "Patient", [(k, v) for k, v in params if k in ("_cursor", "_count")])
    _refused_as_not_valid_here(other_type.value)
    # A different page size is the same search: the link still pages.
    resized = [(k, v if k != "_count" else "7") for k, v in params]
    assert len(ids(search(caller, "Observation", urlencode(resized)))) == 7


def test_other_tenant_pages_see_nothing(many: dict[str, Any], cast: Any) -> None:
    in_tenant(cast.tenant_b)
    bundle = search(
        caller_for(cast.client_b, cast.tenant_b), "Observation", f"{many['run']}&_count={PAGE}"
    )
    assert ids(bundle) == [] and link(bundle, "next") is None and bundle["total"] == 0
    everything = search(caller_for(cast.client_b, cast.tenant_b), "Observation", "_count=1000")
    assert not set(ids(everything)) & set(many["ids"])
