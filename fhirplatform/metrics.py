"""Prometheus metrics: one registry of the platform's metrics and the /metrics view.

Under gunicorn the web workers are separate processes, so when
PROMETHEUS_MULTIPROC_DIR is set the view aggregates every worker's samples.
"""

import ipaddress
import os
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client import REGISTRY as DEFAULT_REGISTRY

REQUESTS = Counter(
    "fhirplatform_http_requests_total",
    "HTTP requests by route class and status",
    ["route", "status"],
)
LATENCY = Histogram(
    "fhirplatform_http_request_seconds",
    "HTTP request latency by route class",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


# Collectors that read shared state (Redis) when /metrics is scraped, not per-process
# samples: served beside the multiprocess aggregate too (fhirplatform/cache/metrics.py).
SCRAPE_COLLECTORS: list[Any] = []


def route_class(path: str) -> str:
    """A bounded label: never the tenant or resource id, so cardinality stays small."""
    for prefix, name in (
        ("/fhir/", "fhir"),
        ("/oauth/", "oauth"),
        ("/admin/", "admin"),
        ("/portal/", "portal"),
    ):
        if path.startswith(prefix):
            return name
    return "other"


def _allowed(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    if token and request.headers.get("Authorization") == f"Bearer {token}":
        return True
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return address.is_loopback


def metrics_view(request: HttpRequest) -> HttpResponse:
    if not _allowed(request):
        return HttpResponse(status=404)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        for collector in SCRAPE_COLLECTORS:
            registry.register(collector)
        output = generate_latest(registry)
    else:
        output = generate_latest(DEFAULT_REGISTRY)
    return HttpResponse(output, content_type=CONTENT_TYPE_LATEST)
