"""The cost table: what one request weighs, in cost units of its endpoint class.

A read is the unit. Views call these functions from `describe()`; requests that
are too costly are refused here, before any bucket is touched.
"""

from typing import Any

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


def bundle_cost(*, bundle: Any) -> int:
    """Cost of a batch/transaction Bundle: the sum of its entries' costs.

    Refuses, before anything runs, a Bundle with more entries than the cap.
    """
    if not isinstance(bundle, dict):
        raise FhirError(400, IssueCode.STRUCTURE, "A Bundle must be a JSON object")
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise FhirError(
            400, IssueCode.STRUCTURE, "Bundle.entry must be an array", expression=["Bundle.entry"]
        )
    cap = settings.LIMITS_BUNDLE_MAX_ENTRIES
    if len(entries) > cap:
        raise FhirError(
            413,
            IssueCode.TOO_COSTLY,
            f"Bundle has {len(entries)} entries; at most {cap} are accepted per request",
            expression=["Bundle.entry"],
        )
    total = 0
    for entry in entries:
        request = entry.get("request") if isinstance(entry, dict) else None
        method = str(request.get("method", "")).upper() if isinstance(request, dict) else ""
        total += BUNDLE_ENTRY_COST.get(method, 1)
    return max(1, total)
