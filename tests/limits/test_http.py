"""Rate limits over real HTTP: gunicorn on loopback, real Redis, several workers and threads."""

import math
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from fhirplatform.limits.codes import ThrottleReason
from fhirplatform.limits.models import ThrottleEvent
from tests.limits.conftest import ratelimit_policies
from tests.limits.live import bearer, gunicorn, new_client, patient_create

pytestmark = [pytest.mark.live]


def test_headers_on_every_response_and_a_clear_429(server, committed, cast, limiter_redis):
    client, token = new_client(cast.tenant_a.slug, read_per_minute=60)
    patient_id = patient_create(server, "provider-a", token)
    url = f"{server}/fhir/provider-a/Patient/{patient_id}"
    with requests.Session() as session:
        for expected_remaining in range(9, -1, -1):
            response = session.get(url, headers=bearer(token), timeout=10)
            assert response.status_code == 200
            policy = ratelimit_policies(response.headers)["endpoint-read"]
            assert (policy["q"], policy["w"], policy["r"]) == (60, 60, expected_remaining)
            assert 1 <= policy["t"] <= 10  # seconds until the bucket is full again
        throttled = session.get(url, headers=bearer(token), timeout=10)
        missing = session.get(url + "-missing", headers=bearer(token), timeout=10)

    assert throttled.status_code == 429
    assert throttled.headers["Content-Type"].startswith("application/fhir+json")
    issue = throttled.json()["issue"][0]
    assert issue["code"] == "throttled"
    assert issue["details"]["coding"][0]["code"] == ThrottleReason.ENDPOINT_RATE
    assert "endpoint-read" in issue["diagnostics"] and "retry after" in issue["diagnostics"]
    policies = ratelimit_policies(throttled.headers)
    assert policies["endpoint-read"]["r"] == 0
    assert int(throttled.headers["Retry-After"]) >= policies["endpoint-read"]["t"] >= 1
    assert "X-Request-ID" in throttled.headers
    # Errors carry the headers too (this one was throttled before it could be a 404).
    assert missing.status_code in (404, 429) and "RateLimit" in missing.headers
    deadline = time.monotonic() + 5
    while not ThrottleEvent.objects.filter(client=client).exists():
        assert time.monotonic() < deadline, "throttle event not recorded"
        time.sleep(0.2)
    event = ThrottleEvent.objects.filter(client=client).first()
    assert event is not None
    assert (event.tenant_id, event.reason, event.endpoint_class) == (
        cast.tenant_a.pk,
        ThrottleReason.ENDPOINT_RATE,
        "read",
    )


def test_refused_auth_never_consumes_quota(server, committed, cast, limiter_redis):
    client, token = new_client(cast.tenant_a.slug, read_per_minute=60)
    _, narrow = new_client(cast.tenant_a.slug, scopes="system/Observation.rs")
    patient_id = patient_create(server, "provider-a", token)
    url = f"{server}/fhir/provider-a/Patient/{patient_id}"
    with requests.Session() as session:
        for _ in range(15):
            assert session.get(url, headers=bearer("not-a-token"), timeout=10).status_code == 401
            assert session.get(url, headers=bearer(narrow), timeout=10).status_code == 403
        assert not limiter_redis.exists(f"fp:rl:provider-a:grant:{client.client_id}:read")
        statuses = [
            session.get(url, headers=bearer(token), timeout=10).status_code for _ in range(10)
        ]
    assert statuses == [200] * 10  # the whole burst of 10 is still there


def test_the_other_tenant_cannot_use_or_drain_tenant_a_limits(
    server, committed, cast, limiter_redis
):
    _, token_a = new_client(cast.tenant_a.slug, read_per_minute=60)
    patient_a = patient_create(server, "provider-a", token_a)
    # A's token on B's URL is the shared 404 and touches none of B's buckets.
    response = requests.get(
        f"{server}/fhir/payer-b/Patient/{patient_a}", headers=bearer(token_a), timeout=10
    )
    assert response.status_code == 404
    assert not limiter_redis.keys("fp:rl:payer-b:*")
    # A throttled does not throttle B.
    for _ in range(11):
        requests.get(
            f"{server}/fhir/provider-a/Patient/{patient_a}", headers=bearer(token_a), timeout=10
        )
    _, token_b = new_client(cast.tenant_b.slug, read_per_minute=60)
    patient_b = patient_create(server, "payer-b", token_b)
    response = requests.get(
        f"{server}/fhir/payer-b/Patient/{patient_b}", headers=bearer(token_b), timeout=10
    )
    assert response.status_code == 200
    assert ratelimit_policies(response.headers)["endpoint-read"]["r"] == 9


def _flood(url: str, token: str, seconds: float, threads: int) -> tuple[list[int], float, float]:
    """Hammer url from many threads; returns statuses and the wall-clock window used."""
    statuses: list[int] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def worker() -> None:
        with requests.Session() as session:
            while time.monotonic() < stop_at:
                status = session.get(url, headers=bearer(token), timeout=10).status_code
                with lock:
                    statuses.append(status)

    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(threads):
            pool.submit(worker)
    return statuses, started, time.monotonic()


def test_admitted_never_exceeds_the_bound_across_workers_and_threads(
    committed, cast, limiter_redis
):
    # 120 per minute = 2 per second, depth 20 (10 s burst).
    _, token = new_client(cast.tenant_a.slug, read_per_minute=120)
    with gunicorn(workers=3, threads=4) as base:
        patient_id = patient_create(base, "provider-a", token)
        statuses, started, ended = _flood(
            f"{base}/fhir/provider-a/Patient/{patient_id}", token, seconds=3, threads=16
        )
    admitted = statuses.count(200)
    bound = 20 + math.floor(2 * (ended - started))
    assert set(statuses) <= {200, 429}
    assert statuses.count(429) > 0
    assert 20 <= admitted <= bound, (admitted, bound, len(statuses))


def _latencies(url: str, token: str, count: int, interval: float) -> tuple[list[float], list[int]]:
    latencies, statuses = [], []
    with requests.Session() as session:
        for _ in range(count):
            started = time.perf_counter()
            response = session.get(url, headers=bearer(token), timeout=10)
            latencies.append(time.perf_counter() - started)
            statuses.append(response.status_code)
            time.sleep(interval)
    return latencies, statuses


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def test_noisy_neighbour_gets_no_429_for_tenant_b(server, committed, cast, limiter_redis):
    # Tenant A's client may read 120/min (2/s); it sends back to back from 3 threads.
    _, token_a = new_client(cast.tenant_a.slug, read_per_minute=120)
    _, token_b = new_client(cast.tenant_b.slug)
    patient_a = patient_create(server, "provider-a", token_a)
    patient_b = patient_create(server, "payer-b", token_b)
    url_b = f"{server}/fhir/payer-b/Patient/{patient_b}"
    quiet, quiet_statuses = _latencies(url_b, token_b, count=40, interval=0.02)

    result: dict[str, tuple[list[int], float, float]] = {}

    def flood() -> None:
        result["flood"] = _flood(
            f"{server}/fhir/provider-a/Patient/{patient_a}", token_a, seconds=3, threads=3
        )

    flooder = threading.Thread(target=flood)
    flooder.start()
    time.sleep(0.3)
    noisy, noisy_statuses = _latencies(url_b, token_b, count=40, interval=0.02)
    flooder.join()
    statuses, _, _ = result["flood"]
    # A sends again as soon as it is answered; once refused, the gate answers it and reads
    # its kept-alive connections late (LIMITS_FLOOD_DELAY_MS): its rate is the server's.
    assert statuses.count(429) > len(statuses) / 2 >= 5
    assert quiet_statuses == noisy_statuses == [200] * 40
    # Generous on a shared CI machine; the benchmark prints the precise figures.
    assert p95(noisy) <= 4 * p95(quiet) + 0.1, (p95(quiet), p95(noisy))


@pytest.mark.django_db
def test_operators_see_throttle_events_read_only_in_the_admin(admin_client):
    # (Also the db-marked item that makes pytest-django create the test database when
    # this module runs alone: its live tests write through `committed` instead.)
    assert admin_client.get("/admin/limits/throttleevent/").status_code == 200
    assert admin_client.get("/admin/limits/throttleevent/add/").status_code == 403
    assert admin_client.get("/admin/limits/limitoverride/add/").status_code == 200
    assert admin_client.get("/admin/limits/limiterswitch/").status_code == 200


def test_costs_are_weighted_and_too_costly_requests_refused_up_front(
    server, committed, cast, limiter_redis
):
    client, token = new_client(cast.tenant_a.slug, search_per_minute=60, batch_per_minute=60)
    patient_id = patient_create(server, "provider-a", token)
    search_key = f"fp:rl:provider-a:grant:{client.client_id}:search"
    refused = requests.get(
        f"{server}/fhir/provider-a/Patient?_count=5000", headers=bearer(token), timeout=10
    )
    assert refused.status_code == 400
    assert refused.json()["issue"][0]["code"] == "too-costly"
    assert not limiter_redis.exists(search_key)  # refused before any bucket moved

    search = requests.get(
        f"{server}/fhir/provider-a/Patient?_count=150", headers=bearer(token), timeout=10
    )
    assert search.status_code == 200
    assert (
        ratelimit_policies(search.headers)["endpoint-search"]["r"] == 10 - 3
    )  # 2 + 1 for the second page

    # Reads in a batch are priced like the searches they may be: 3 GET entries cost 6.
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": f"Patient/{patient_id}"}}] * 3,
    }
    batch = requests.post(
        f"{server}/fhir/provider-a/",
        json=bundle,
        headers=bearer(token) | {"Content-Type": "application/fhir+json"},
        timeout=10,
    )
    assert batch.status_code == 200, batch.text
    assert (
        ratelimit_policies(batch.headers)["endpoint-batch"]["r"] == 10 - 6
    )  # the sum of its 3 entries


def test_a_client_sending_while_refused_is_read_late(server, committed, cast, limiter_redis):
    """A refused client that sends again at once is answered by the gate, and its kept-alive
    connection's next request is read up to LIMITS_FLOOD_DELAY_MS later, never past the
    refusal; another client's requests are answered meanwhile."""
    _, flooder = new_client(cast.tenant_a.slug, read_per_minute=6)  # refused ~10 s
    _, other = new_client(cast.tenant_a.slug, read_per_minute=600)
    url = f"{server}/fhir/provider-a/Patient/no-such-patient"
    with requests.Session() as flood, requests.Session() as calm:
        for _ in range(20):  # the burst, then Redis refuses: this worker learns it
            if flood.get(url, headers=bearer(flooder), timeout=10).status_code == 429:
                break
        gated = flood.get(url, headers=bearer(flooder), timeout=10)  # read at once
        assert gated.status_code == 429
        started = time.monotonic()
        late = threading.Thread(target=lambda: flood.get(url, headers=bearer(flooder), timeout=10))
        late.start()
        time.sleep(0.05)
        answered = calm.get(url, headers=bearer(other), timeout=10)
        calm_seconds = time.monotonic() - started
        late.join()
        late_seconds = time.monotonic() - started
    assert answered.status_code == 404
    assert calm_seconds < 0.4
    assert 0.45 <= late_seconds < 2  # LIMITS_FLOOD_DELAY_MS is 500
