"""Redis down: reads and writes keep working under the stricter local limiter, metrics say
so, and the shared engine resumes without a restart when Redis is back."""

import re
import tempfile
import time
import uuid

import pytest
import redis
import requests

from fhirplatform.errors import FhirError
from fhirplatform.limits.codes import EndpointClass, ThrottleReason
from fhirplatform.limits.deciders import limiter_in_fallback
from fhirplatform.limits.engine import limit_admit
from scripts.loopback import free_port
from tests.limits.conftest import plan_make, ratelimit_policies
from tests.limits.live import bearer, gunicorn, new_client, patient_create
from tests.redis_support import PrivateRedis

pytestmark = [pytest.mark.live]


def metric(base: str, name: str) -> float:
    text = requests.get(f"{base}/metrics", timeout=10).text
    values = [float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)]
    return max(values) if values else 0.0


@pytest.mark.django_db
def test_local_fallback_in_process_and_resume(cast, new_caller, limiter_redis, settings):
    caller = new_caller(cast.tenant_a, plan_make(read_per_minute=120))  # depth 20; local 25%: 5
    shared_url = settings.LIMITS_REDIS_URL
    settings.LIMITS_REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    started = time.perf_counter()
    admissions = []
    for _ in range(5):
        admissions.append(
            limit_admit(caller=caller, endpoint_class=EndpointClass.READ, resource_type="Patient")
        )
        admissions[-1].release()
    assert time.perf_counter() - started < 1.0  # one failed connect, then the breaker holds
    assert limiter_in_fallback()
    assert ratelimit_policies(admissions[0].headers)["endpoint-read"]["q"] == 30
    with pytest.raises(FhirError) as refused:
        limit_admit(caller=caller, endpoint_class=EndpointClass.READ, resource_type="Patient")
    assert refused.value.status == 429
    assert refused.value.outcome()["issue"][0]["details"]["coding"][0]["code"] == (
        ThrottleReason.ENDPOINT_RATE
    )

    assert "local fallback" in refused.value.outcome()["issue"][0]["diagnostics"]

    settings.LIMITS_REDIS_URL = shared_url  # Redis is back...
    time.sleep(1.1)  # ...and the breaker's retry interval has passed
    admission = limit_admit(
        caller=caller, endpoint_class=EndpointClass.READ, resource_type="Patient"
    )
    assert not limiter_in_fallback()
    assert ratelimit_policies(admission.headers)["endpoint-read"]["q"] == 120


def test_redis_stopped_mid_run_and_restarted(committed, cast, tmp_path):
    own = PrivateRedis(tmp_path)
    own.start()
    _, token = new_client(cast.tenant_a.slug, read_per_minute=120)
    metrics_dir = tempfile.mkdtemp(prefix="fp-limits-metrics-")
    env = {"LIMITS_REDIS_URL": own.url, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    try:
        # One worker: the fallback gauge is per process, and a second worker that never
        # sees a request after Redis returns would keep reporting its last state.
        with gunicorn(workers=1, threads=2, env=env) as base:
            patient_id = patient_create(base, "provider-a", token)
            url = f"{base}/fhir/provider-a/Patient/{patient_id}"
            with requests.Session() as session:
                up = session.get(url, headers=bearer(token), timeout=10)
                assert (
                    up.status_code == 200
                    and ratelimit_policies(up.headers)["endpoint-read"]["q"] == 120
                )
                assert redis.Redis.from_url(own.url).keys("fp:rl:provider-a:*")

                own.stop()
                down = [session.get(url, headers=bearer(token), timeout=10) for _ in range(30)]
                statuses = [r.status_code for r in down]
                assert statuses[:3] == [200, 200, 200]  # reads keep working...
                assert set(statuses) <= {200, 429} and 429 in statuses  # ...under stricter limits
                assert all(ratelimit_policies(r.headers)["endpoint-read"]["q"] == 30 for r in down)
                created = session.post(
                    f"{base}/fhir/provider-a/Patient",
                    json={"resourceType": "Patient", "name": [{"family": "Offline"}]},
                    headers=bearer(token) | {"Content-Type": "application/fhir+json"},
                    timeout=10,
                )
                assert created.status_code == 201  # writes too
                keyed = session.post(
                    f"{base}/fhir/provider-a/Patient",
                    json={"resourceType": "Patient"},
                    headers=bearer(token)
                    | {
                        "Content-Type": "application/fhir+json",
                        "Idempotency-Key": str(uuid.uuid4()),
                    },
                    timeout=10,
                )
                assert keyed.status_code == 503 and "Retry-After" in keyed.headers
                assert metric(base, "fhirplatform_limiter_fallback") == 1
                assert metric(base, "fhirplatform_limiter_fallback_decisions_total") >= 30

                own.start()  # same port, empty: the scripts must be loaded again
                time.sleep(1.2)  # the breaker's retry interval
                deadline = time.monotonic() + 15
                while True:
                    back = session.get(url, headers=bearer(token), timeout=10)
                    if (
                        back.status_code == 200
                        and ratelimit_policies(back.headers)["endpoint-read"]["q"] == 120
                        and metric(base, "fhirplatform_limiter_fallback") == 0
                    ):
                        break
                    assert time.monotonic() < deadline, "shared limiter did not resume"
                    time.sleep(0.2)
                assert redis.Redis.from_url(own.url).keys("fp:rl:provider-a:*")
    finally:
        own.stop()
