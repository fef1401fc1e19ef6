#!/usr/bin/env python
"""FHIR core benchmark, through real HTTP with a real token against gunicorn on loopback.

    .venv/bin/python scripts/bench_fhir.py                  # quick: 100 patients, 5,000 obs
    .venv/bin/python scripts/bench_fhir.py --full           # 1,000 patients, 100,000 obs
    .venv/bin/python scripts/bench_fhir.py --baseline REV --rounds 5   # this code vs REV's

Creates (or reuses) a benchmark tenant, fills it with the synthetic generator, starts
gunicorn with scripts/bench_fhir_settings.py (the platform plus one bare baseline view),
then measures for --seconds each: read, the bare view returning the same JSON,
Observation?patient=&code=&date=ge search, and create. Prints p50/p99 and requests/s.
Uses DATABASE_URL / REDIS_URL like the platform.

With --baseline REV a second gunicorn runs REV's code (a git worktree under .data/) on the
same database, and every round reads through both servers one after the other, so a change
is compared with its parent in one run on the same machine load. With several --rounds the
summary is the median of the rounds.
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
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
    token_issue,
)

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
    parser.add_argument(
        "--baseline", metavar="REV", help="also read through REV's code, interleaved"
    )
    parser.add_argument("--rounds", type=int, default=1, help="measure every path N times")
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

    rounds: dict[str, list[dict[str, float]]] = {}
    # The benchmark's own settings add the bare comparison view; production never has it.
    server_env = dict(
        os.environ, DJANGO_SETTINGS_MODULE="scripts.bench_fhir_settings", LOG_LEVEL="WARNING"
    )
    load_before = os.getloadavg()
    with ExitStack() as servers:
        server_url = servers.enter_context(
            gunicorn(env=server_env, workers=args.workers, threads=args.threads)
        )
        base = f"{server_url}/fhir/{slug}"
        bare = f"{server_url}/bench-bare/{slug}"
        baseline = None
        if args.baseline:
            baseline_url = servers.enter_context(
                gunicorn(
                    env=server_env,
                    workers=args.workers,
                    threads=args.threads,
                    root=_baseline_checkout(args.baseline),
                )
            )
            baseline = f"{baseline_url}/fhir/{slug}"

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

        def reader(root: str) -> Callable[[requests.Session, random.Random], requests.Response]:
            def read(session: requests.Session, rng: random.Random) -> requests.Response:
                return session.get(f"{root}/Patient/{rng.choice(patient_ids)}")

            return read

        read, bare_read = reader(base), reader(bare)

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

        # Warm every path (connections, caches) before measuring.
        _measure("warm-up", 1.5, args.concurrency, read, token())
        _measure("warm-up (bare)", 1.0, args.concurrency, bare_read, {})
        if baseline:
            _measure("warm-up (baseline)", 1.5, args.concurrency, reader(baseline), token())
        print(
            f"\n{slug}: {len(patient_ids)} patients sampled, {args.concurrency} client "
            f"threads, gunicorn {args.workers}x{args.threads}, {args.seconds:.0f}s each, "
            f"{args.rounds} round(s)"
        )
        plan: list[tuple[str, str, Callable[..., requests.Response], bool]] = [
            ("bare", "bare Django view (same JSON)", bare_read, False),
            ("read", "read  GET Patient/{id}", read, True),
        ]
        if baseline:
            plan.append(
                (
                    "read_baseline",
                    f"read  GET Patient/{{id}} at {args.baseline}",
                    reader(baseline),
                    True,
                )
            )
        plan += [
            ("search", "search Observation?patient&code&date=ge", search, True),
            ("create", "create POST Observation", create, True),
        ]
        for number in range(1, args.rounds + 1):
            if args.rounds > 1:
                print(f"-- round {number}")
            for key, label, call, authorised in plan:
                measured = _measure(
                    label, args.seconds, args.concurrency, call, token() if authorised else {}
                )
                rounds.setdefault(key, []).append(measured)
    results = {key: _median_of(measured) for key, measured in rounds.items()}
    load_after = os.getloadavg()
    if args.rounds > 1:
        print(f"\nmedian of {args.rounds} rounds")
        for key, label, _, _ in plan:
            row = results[key]
            print(
                f"{label:<44} p50={row['p50_ms']:7.2f} ms  p99={row['p99_ms']:7.2f} ms  "
                f"{row['rps']:8.1f} req/s"
            )
    ratio_p50 = results["read"]["p50_ms"] / results["bare"]["p50_ms"]
    ratio_rps = results["bare"]["rps"] / results["read"]["rps"]
    print(f"\nfull-pipeline read / bare view: p50 x{ratio_p50:.2f}, throughput x{ratio_rps:.2f}")
    summary: dict[str, object] = {
        "tenant": slug,
        "results": results,
        "ratio_p50": ratio_p50,
        "ratio_rps": ratio_rps,
        "load_average": {"before": load_before, "after": load_after},
    }
    if baseline:
        against = results["read_baseline"]
        summary["read_vs_baseline_p50"] = results["read"]["p50_ms"] / against["p50_ms"]
        summary["read_vs_baseline_rps"] = results["read"]["rps"] / against["rps"]
        print(
            f"read, this code / {args.baseline}: p50 x{summary['read_vs_baseline_p50']:.2f}, "
            f"throughput x{summary['read_vs_baseline_rps']:.2f}"
        )
    print(
        "load average (1/5/15 min) before "
        + " / ".join(f"{v:.2f}" for v in load_before)
        + ", after "
        + " / ".join(f"{v:.2f}" for v in load_after)
    )
    if args.json:
        print(json.dumps(summary))


def _median_of(measured: list[dict[str, float]]) -> dict[str, float]:
    return {name: statistics.median(row[name] for row in measured) for name in measured[0]}


def _baseline_checkout(rev: str) -> Path:
    """REV's code in a git worktree under .data/, made once and reused."""
    sha = subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    root = ROOT / ".data" / "bench-baseline" / sha[:12]
    if not (root / "manage.py").exists():
        subprocess.run(
            ["git", "worktree", "add", "--force", "--detach", str(root), sha],
            cwd=ROOT,
            check=True,
        )
    return root


if __name__ == "__main__":
    main()
