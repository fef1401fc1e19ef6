#!/usr/bin/env python
"""FHIR core benchmark, through real HTTP with a real token against gunicorn on loopback.

    .venv/bin/python scripts/bench_fhir.py                  # quick: 100 patients, 5,000 obs
    .venv/bin/python scripts/bench_fhir.py --full           # 1,000 patients, 100,000 obs

Creates (or reuses) a benchmark tenant, fills it with the synthetic generator, starts
gunicorn with scripts/bench_fhir_settings.py (the platform plus one bare baseline view),
then measures for --seconds each: read, the bare view returning the same JSON,
Observation?patient=&code=&date=ge search, and create. Prints p50/p99 and requests/s.
Uses DATABASE_URL / REDIS_URL like the platform.
"""

import argparse
import json
import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import django
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fhirplatform.settings")
django.setup()

from fhirplatform.fhir.loading import fhir_generate  # noqa: E402
from fhirplatform.fhir.models import Resource  # noqa: E402
from fhirplatform.fhir.synthetic import OBSERVATION_KINDS  # noqa: E402
from fhirplatform.schemas import tenant_schema  # noqa: E402
from scripts.loopback import gunicorn  # noqa: E402
from tenants.models import Grant, RatePlan, Tenant  # noqa: E402
from tenants.scopes import scopes_parse  # noqa: E402
from tenants.services import (  # noqa: E402
    client_create,
    rate_plan_count_only,
    tenant_create,
)
from tenants.tokens import token_issue  # noqa: E402

BENCH_PLAN = "bench-unthrottled"


def _plan() -> RatePlan:
    # Count-only limits: the benchmark measures the pipeline, including the limiter's
    # Redis round trip, without being refused by it.
    return rate_plan_count_only(name=BENCH_PLAN, description="Benchmarks: count, never refuse")


def _tenant(slug: str, patients: int, observations: int, seed: int) -> tuple[Tenant, Grant]:
    plan = _plan()
    tenant = Tenant.objects.filter(slug=slug).first() or tenant_create(
        slug=slug, name="FHIR benchmark", plan_name=BENCH_PLAN
    )
    tenant.plan = plan
    tenant.save(update_fields=["plan"])
    grant = Grant.objects.filter(tenant=tenant, client__name="fhir benchmark").first()
    if grant is None:
        grant = client_create(
            partner_name="Benchmark",
            tenant_slugs=[slug],
            scopes="system/*.cruds",
            plan_name=BENCH_PLAN,
            name="fhir benchmark",
        ).grants[0]
    with tenant_schema(tenant):
        have = Resource.objects.filter(resource_type="Observation").count()
    if have < observations:
        print(
            f"generating {patients} patients / {observations} observations into {slug} ...",
            flush=True,
        )
        report = fhir_generate(
            tenant=tenant,
            patients=patients,
            observations_per_patient=max(1, observations // patients),
            seed=seed,
        )
        print(
            f"  {report.resources} resources in {report.seconds:.1f}s "
            f"({report.resources_per_second:.0f} resources/s)",
            flush=True,
        )
    else:
        print(f"reusing {slug}: {have} observations already loaded", flush=True)
    return tenant, grant


def _measure(
    name: str,
    seconds: float,
    concurrency: int,
    call: Callable[[requests.Session, random.Random], requests.Response],
    headers: dict[str, str],
) -> dict[str, float]:
    latencies: list[float] = []
    errors: list[int] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(number: int) -> None:
        session = requests.Session()
        session.headers.update(headers)
        rng = random.Random(number)
        mine, bad = [], []
        while time.monotonic() < stop:
            started = time.perf_counter()
            response = call(session, rng)
            mine.append(time.perf_counter() - started)
            if response.status_code >= 300:
                bad.append(response.status_code)
        with lock:
            latencies.extend(mine)
            errors.extend(bad)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(concurrency)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    latencies.sort()
    result = {
        "requests": len(latencies),
        "errors": len(errors),
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "rps": len(latencies) / elapsed,
    }
    print(
        f"{name:<44} n={result['requests']:<6} err={result['errors']:<4} "
        f"p50={result['p50_ms']:7.2f} ms  p99={result['p99_ms']:7.2f} ms  "
        f"{result['rps']:8.1f} req/s",
        flush=True,
    )
    if errors:
        print(f"   first error statuses: {sorted(set(errors))[:5]}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="the issue's size: 1,000 patients and 100,000 observations",
    )
    parser.add_argument("--patients", type=int, default=100)
    parser.add_argument("--observations", type=int, default=5_000)
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tenant", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.full:
        args.patients, args.observations = 1_000, 100_000
    slug = args.tenant or f"bench-{args.patients}p-{args.observations}o"
    tenant, grant = _tenant(slug, args.patients, args.observations, args.seed)

    with tenant_schema(tenant):
        patient_ids = list(
            Resource.objects.filter(resource_type="Patient", deleted=False).values_list(
                "logical_id", flat=True
            )[:500]
        )
    codes = [kind[0] for kind in OBSERVATION_KINDS]

    results: dict[str, dict[str, float]] = {}
    # The benchmark's own settings add the bare comparison view; production never has it.
    server_env = dict(
        os.environ, DJANGO_SETTINGS_MODULE="scripts.bench_fhir_settings", LOG_LEVEL="WARNING"
    )
    with gunicorn(env=server_env, workers=args.workers, threads=args.threads) as server_url:
        base = f"{server_url}/fhir/{slug}"
        bare = f"{server_url}/bench-bare/{slug}"

        def token() -> dict[str, str]:
            # Tokens live at most 300 s, so each measurement gets a fresh one.
            issued = token_issue(
                grant=grant, scopes=scopes_parse("system/*.cruds"), auth_method="benchmark"
            )
            return {
                "Authorization": f"Bearer {issued.access_token}",
                "Accept": "application/fhir+json",
                "Content-Type": "application/fhir+json",
            }

        def read(session: requests.Session, rng: random.Random) -> requests.Response:
            return session.get(f"{base}/Patient/{rng.choice(patient_ids)}")

        def bare_read(session: requests.Session, rng: random.Random) -> requests.Response:
            return session.get(f"{bare}/Patient/{rng.choice(patient_ids)}")

        def search(session: requests.Session, rng: random.Random) -> requests.Response:
            return session.get(
                f"{base}/Observation",
                params={
                    "patient": rng.choice(patient_ids),
                    "code": f"http://loinc.org|{rng.choice(codes)}",
                    "date": "ge2018-01-01",
                },
            )

        def create(session: requests.Session, rng: random.Random) -> requests.Response:
            body = {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "subject": {"reference": f"Patient/{rng.choice(patient_ids)}"},
                "effectiveDateTime": "2024-05-01T10:00:00Z",
                "valueQuantity": {
                    "value": rng.randint(50, 110),
                    "unit": "/min",
                    "system": "http://unitsofmeasure.org",
                    "code": "/min",
                },
            }
            return session.post(
                f"{base}/Observation", data=json.dumps(body), headers={"Prefer": "return=minimal"}
            )

        # Warm both paths (connections, caches) before measuring.
        _measure("warm-up", 1.5, args.concurrency, read, token())
        _measure("warm-up (bare)", 1.0, args.concurrency, bare_read, {})
        print(
            f"\n{slug}: {len(patient_ids)} patients sampled, {args.concurrency} client "
            f"threads, gunicorn {args.workers}x{args.threads}, {args.seconds:.0f}s each"
        )
        results["bare"] = _measure(
            "bare Django view (same JSON)", args.seconds, args.concurrency, bare_read, {}
        )
        results["read"] = _measure(
            "read  GET Patient/{id}", args.seconds, args.concurrency, read, token()
        )
        results["search"] = _measure(
            "search Observation?patient&code&date=ge",
            args.seconds,
            args.concurrency,
            search,
            token(),
        )
        results["create"] = _measure(
            "create POST Observation", args.seconds, args.concurrency, create, token()
        )
    ratio_p50 = results["read"]["p50_ms"] / results["bare"]["p50_ms"]
    ratio_rps = results["bare"]["rps"] / results["read"]["rps"]
    print(f"\nfull-pipeline read / bare view: p50 x{ratio_p50:.2f}, throughput x{ratio_rps:.2f}")
    if args.json:
        print(
            json.dumps(
                {"tenant": slug, "results": results, "ratio_p50": ratio_p50, "ratio_rps": ratio_rps}
            )
        )


if __name__ == "__main__":
    main()
