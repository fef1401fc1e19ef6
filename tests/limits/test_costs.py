"""The cost table: weights, and the requests refused up front as too costly."""

import pytest

from fhirplatform.errors import FhirError
from fhirplatform.fhir.paging import count_parse
from fhirplatform.limits.codes import EndpointClass
from fhirplatform.limits.costs import bundle_cost, bundle_size_check, request_cost, search_cost


def test_a_search_costs_more_than_a_read_and_grows_with_count():
    read = request_cost(endpoint_class=EndpointClass.READ, declared=0)
    assert read == 1
    assert search_cost(count=count_parse(None)) == 2 > read
    assert search_cost(count=100) == 2
    assert search_cost(count=101) == 3
    assert search_cost(count=1000) == 11


@pytest.mark.parametrize("count", ["1001", "-1", "ten", "١٢"])
def test_a_count_above_the_cap_or_invalid_is_refused(settings, count):
    settings.FHIR_MAX_COUNT = 1000
    with pytest.raises(FhirError) as caught:
        count_parse(count)
    issue = caught.value.outcome()["issue"][0]
    assert caught.value.status == 400
    assert issue["expression"] == ["_count"]
    if count == "1001":
        assert issue["code"] == "too-costly" and "1000" in issue["diagnostics"]


def test_a_bundle_costs_the_sum_of_its_entries():
    # The methods of a planned Bundle's entries: a GET may be a search, priced as one.
    assert bundle_cost(methods=["GET", "POST", "DELETE"]) == 2 + 1 + 1
    assert bundle_cost(methods=[]) == 1


def test_an_oversized_bundle_is_refused_before_anything_runs(settings):
    settings.LIMITS_BUNDLE_MAX_ENTRIES = 3
    bundle_size_check(entries=3)
    with pytest.raises(FhirError) as caught:
        bundle_size_check(entries=4)
    assert caught.value.status == 413
    assert caught.value.outcome()["issue"][0]["code"] == "too-costly"
    assert "4 entries" in caught.value.outcome()["issue"][0]["diagnostics"]
