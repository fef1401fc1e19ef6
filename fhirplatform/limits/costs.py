"""The cost table: what one request weighs, in cost units of its endpoint class.

A read is the unit. The FHIR views price a request in `describe()` (a Bundle's
planning checks its size here first); requests that are too costly are refused here,
before any bucket is touched.
"""

from collections.abc import Iterable

from django.conf import settings

from fhirplatform.errors import FhirError, IssueCode
from fhirplatform.limits.codes import EndpointClass

BASE_COST: dict[EndpointClass, int] = {
    EndpointClass.READ: 1,
    EndpointClass.SEARCH: 2,
    EndpointClass.WRITE: 1,
    EndpointClass.HISTORY: 2,
    EndpointClass.BATCH: 1,
    EndpointClass.EXPORT: 1,
    EndpointClass.EXPORT_POLL: 1,
}

# Cost of one Bundle entry by its HTTP method (a GET entry may be a search; priced as one).
BUNDLE_ENTRY_COST: dict[str, int] = {
    "GET": 2,
    "HEAD": 1,
    "POST": 1,
    "PUT": 1,
    "PATCH": 1,
    "DELETE": 1,
}

# Searches get one extra unit per started page of this many requested results.
SEARCH_PAGE_UNITS = 100

# Latency above which a completed request counts as "slow" for the adaptive limiter.
LATENCY_TARGET_MS: dict[EndpointClass, int] = {
    EndpointClass.READ: 500,
    EndpointClass.WRITE: 1000,
    EndpointClass.SEARCH: 2000,
    EndpointClass.HISTORY: 2000,
    EndpointClass.BATCH: 5000,
    EndpointClass.EXPORT: 2000,
    EndpointClass.EXPORT_POLL: 500,
}

# Under overload, a class is admitted only while platform in-flight is below this
# share of the adaptive limit: exports and searches go first, reads last.
CRITICALITY_SHARE: dict[EndpointClass, float] = {
    EndpointClass.READ: 1.0,
    EndpointClass.WRITE: 0.95,
    EndpointClass.EXPORT_POLL: 0.9,
    EndpointClass.HISTORY: 0.75,
    EndpointClass.BATCH: 0.75,
    EndpointClass.SEARCH: 0.7,
    EndpointClass.EXPORT: 0.5,
}
# Plans with a priority below this (sandbox) are shed before production plans.
LOW_PRIORITY_BELOW = 30
LOW_PRIORITY_SHARE_FACTOR = 0.8


def request_cost(*, endpoint_class: EndpointClass, declared: int) -> int:
    """What the limiter charges for a request: the view's declared cost (from
    `search_cost` or `bundle_cost`), never less than the cost table says."""
    return max(declared, BASE_COST[endpoint_class])


def search_cost(*, count: int) -> int:
    """Cost of a search (or history page) of `count` results, a count already validated
    by the FHIR paging rule: one extra unit per started page of SEARCH_PAGE_UNITS."""
    pages = max(1, -(-count // SEARCH_PAGE_UNITS))
    return BASE_COST[EndpointClass.SEARCH] + pages - 1


def bundle_size_check(*, entries: int) -> None:
    """Refuse (413), before any entry is planned or run, a Bundle with more entries than
    LIMITS_BUNDLE_MAX_ENTRIES."""
    cap = settings.LIMITS_BUNDLE_MAX_ENTRIES
    if entries > cap:
        raise FhirError(
            413,
            IssueCode.TOO_COSTLY,
            f"Bundle has {entries} entries; at most {cap} are accepted per request",
            expression=["Bundle.entry"],
        )


def bundle_cost(*, methods: Iterable[str]) -> int:
    """Cost of a batch/transaction Bundle: the sum of its planned entries' costs, by method."""
    return max(1, sum(BUNDLE_ENTRY_COST[method] for method in methods))
