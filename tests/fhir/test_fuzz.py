"""Fuzzing the FHIR API in-process (Django's test client, a real token, PostgreSQL and
Redis): resource bodies, search parameters, headers and Bundles. Whatever comes in, the
answer is never a 5xx, and every 4xx is an OperationOutcome.

Reproducible: examples are derandomized (the same inputs on every run) and each runs in
a savepoint that is rolled back, so no example sees another's writes. FHIR_FUZZ_EXAMPLES
sets the number of cases per target (default 400: 1,600 cases, 25-55 s on 2 cores);
FHIR_FUZZ_RANDOM=1 draws new inputs on each run, to look for failures beyond CI's set.
"""

import json
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlencode

import pytest
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhirplatform.fhir import services
from fhirplatform.schemas import tenant_schema
from tests.fhir.fuzz_strategies import (
    HEADER_NAMES,
    HEADER_VALUES,
    REQUESTS,
    STORED_ID,
    dumps,
    entries,
    or_junk,
    resource_texts,
    searches,
)
from tests.fhir.rest_support import FhirClient, generous_limits, patient

pytestmark = pytest.mark.django_db

EXAMPLES = int(os.environ.get("FHIR_FUZZ_EXAMPLES", "400"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=not os.environ.get("FHIR_FUZZ_RANDOM"),
    database=None,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
# Idempotency keys are kept in Redis across runs; a run of its own keeps replays its own.
RUN = uuid.uuid4().hex[:8]
CASES: Counter[str] = Counter()


def _outcome_check(response: Any) -> None:
    status = response.status_code
    assert status < 500, (status, response.content[:1000])
    if status >= 400:
        assert response["Content-Type"].startswith("application/fhir+json"), status
        body = json.loads(response.content)
        assert body["resourceType"] == "OperationOutcome", body
        assert body["issue"], body


@contextmanager
def _rolled_back() -> Iterator[None]:
    savepoint = transaction.savepoint()
    try:
        yield
    finally:
        transaction.savepoint_rollback(savepoint)


@pytest.fixture
def api(cast):
    generous_limits(cast.tenant_a, cast.tenant_b, cast.client_a.grant, cast.client_b.grant)
    with tenant_schema(cast.tenant_a):
        # A Patient with a known id, for updates, reads and references to aim at.
        services.resource_create(
            resource_type="Patient", content=patient(), source="fuzz", logical_id=STORED_ID
        )
    return FhirClient(cast.tenant_a.slug, cast.client_a.token())


def _send(api: FhirClient, method: str, path: str, **kwargs: Any) -> None:
    CASES["sent"] += 1
    with _rolled_back():
        call = getattr(api.client, method.lower())
        response = call(f"{api.base}/{path}", **kwargs)
        _outcome_check(response)


def _run(name: str, target: Any) -> None:
    """Run a target's examples and say how many it sent (pytest -s shows it)."""
    CASES.clear()
    target()
    print(f"\nfuzz {name}: {CASES['sent']} cases, no 5xx")
    assert CASES["sent"] >= EXAMPLES


def test_fuzz_resource_bodies(api):
    @FUZZ
    @given(
        case=resource_texts(),
        method=st.sampled_from(["POST", "PUT", "PATCH"]),
        content_type=st.sampled_from(["application/fhir+json", "application/json"]),
    )
    def run(case: tuple[str, str | bytes], method: str, content_type: str) -> None:
        resource_type, body = case
        path = resource_type if method == "POST" else f"{resource_type}/{STORED_ID}"
        if method == "PATCH":
            content_type = "application/json-patch+json"
        elif method == "PUT" and isinstance(body, str) and body.startswith("{"):
            body = body.replace("{", f'{{"id":"{STORED_ID}",', 1)
        if isinstance(body, str):  # a lone surrogate reaches the wire as the bytes ED A0 80
            body = body.encode("utf-8", "surrogatepass")
        headers = api._headers(None)
        _send(api, method, path, data=body, content_type=content_type, **headers)

    _run("bodies", run)


def test_fuzz_search_parameters(api):
    @FUZZ
    @given(search=searches())
    def run(search: tuple[str, str, list[tuple[str, str]]]) -> None:
        resource_type, where, params = search
        headers = api._headers({"Prefer": "handling=strict"} if len(params) % 2 else None)
        if where == "form":
            form = urlencode(params, errors="surrogatepass")
            kind = "application/x-www-form-urlencoded"
            path = f"{resource_type}/_search"
            _send(api, "POST", path, data=form, content_type=kind, **headers)
            return
        path = {
            "type": resource_type,
            "system": "",
            "history": f"{resource_type}/_history",
            "system-history": "_history",
        }[where]
        query = urlencode(params, errors="surrogatepass")
        _send(api, "GET", f"{path}?{query}" if query else path, **headers)

    _run("search", run)


def test_fuzz_headers(api):
    @FUZZ
    @given(
        request=st.sampled_from(REQUESTS),
        headers=st.dictionaries(st.sampled_from(HEADER_NAMES), HEADER_VALUES, max_size=4),
        content_type=HEADER_VALUES,
    )
    def run(request: tuple[str, str], headers: dict[str, str], content_type: str) -> None:
        method, path = request
        if "Idempotency-Key" in headers:
            headers["Idempotency-Key"] = f"{RUN}{headers['Idempotency-Key']}"
        body: Any = patient(id=STORED_ID)
        if method == "PATCH":
            body = [{"op": "replace", "path": "/gender", "value": "female"}]
        sent = api._headers(headers)
        if method in ("GET", "DELETE"):
            _send(api, method, path, **sent)
        else:
            _send(api, method, path, data=dumps(body), content_type=content_type, **sent)

    _run("headers", run)


def test_fuzz_bundles(api):
    @FUZZ
    @given(
        kind=or_junk(st.sampled_from(["batch", "transaction"])),
        bundle_entries=or_junk(st.lists(entries, max_size=4)),
        prefer=st.sampled_from([None, "return=representation"]),
    )
    def run(kind: Any, bundle_entries: Any, prefer: str | None) -> None:
        bundle = {"resourceType": "Bundle", "type": kind, "entry": bundle_entries}
        headers = api._headers({"Prefer": prefer} if prefer else None)
        data = dumps(bundle)
        _send(api, "POST", "", data=data, content_type="application/fhir+json", **headers)

    _run("bundles", run)


@pytest.mark.parametrize("kind", ["batch", "transaction"])
def test_a_vread_entry_found_by_the_fuzzer(api, kind):
    # A vread entry asked a history row whether it was deleted (it has no such field): a
    # transaction answered 500, a batch a 500 entry.
    request = {"method": "GET", "url": f"Patient/{STORED_ID}/_history/1"}
    bundle = {"resourceType": "Bundle", "type": kind, "entry": [{"request": request}]}
    response = api.post("", bundle)
    assert response.status_code == 200, response.content
    entry = response.json()["entry"][0]
    assert entry["response"]["status"] == "200 OK"
    assert entry["resource"]["id"] == STORED_ID
