#!/usr/bin/env python
"""FHIR hot-path benchmark: the platform next to the floors it is measured against, loaded
with wrk over real HTTP on loopback, interleaved in rounds, and what each interaction
sends to PostgreSQL and Redis, counted on the wire.

    .venv/bin/python scripts/bench_fhir.py                  # quick: 100 patients, 5,000 obs
    .venv/bin/python scripts/bench_fhir.py --full           # 1,000 patients, 100,000 obs
    .venv/bin/python scripts/bench_fhir.py --baseline REV   # also REV's code, interleaved

Creates (or reuses) a benchmark tenant on a count-only plan (the limiter's work is paid,
nothing is refused), fills it with the synthetic generator, and starts one gunicorn per
server, side by side, all with the same --workers and --threads (default 2 x 4, as
`make run`; no access log, LOG_LEVEL from --log-level, default WARNING; every refusal
answered at once, LIMITS_FLOOD_DELAY_MS=0, so that a 429's figure is what answering one
costs):

- platform: `GET /fhir/<tenant>/Patient/<id>` with a bearer token, the full pipeline;
- bare: a plain Django view returning the same stored JSON (scripts/bench_fhir_settings.py);
- minimal: a WSGI function and psycopg reading the same row (scripts/bench_minimal_wsgi.py);
- with --baseline REV: the platform at REV's code (a git worktree under .data/).

Each of --rounds rounds (default 3) runs wrk (scripts/bench_load.py: --connections,
default 8; a Lua script picks a random patient per request) for --seconds (default 6)
against every server in turn: bare, platform read, minimal, [REV read], then on the
platform a search (Observation?patient&code&date=ge), a create (POST Observation) and a
refused read: a second client of the tenant whose plan allows 1 read a minute, so nearly
every request is a 429. Each measurement gets a fresh token, after a 2 s warm-up of every
row. Per measurement: requests/s, p50 and p99 (wrk), the server's CPU time (its
gunicorn master and workers, from /proc/<pid>/stat before and after) per request and as
requests per CPU-second, and the commands clients sent to the limiter's Redis server per
request (Redis's INFO commandstats before and after).

Then one more platform gunicorn (1 worker, 1 thread) runs with every connection through
the counting proxies of scripts/wire_count.py (scripts/bench_counts.py), and --count
requests (default 20) of each interaction are sent one at a time after a warm-up request:
read (with a token already used once), search, create, refused read; a release may ride
with the next admission up to 100 ms later there, so that one-at-a-time requests count
as a stream does (scripts/bench_counts.py). SQL statements,
PostgreSQL round trips and Redis commands per request are counted, not estimated;
--sql also prints what the first of them sent.

Prints each round, then (scripts/bench_report.py) the medians of the rounds, the ratios
of the platform's read to the bare view and to the minimal reader, a 429's server CPU
against a served read's, the load average before and after, the counts, and each goal
of the hot path against its measured value. Servers' output goes to .data/bench-fhir/.
The default run takes about 3-4 minutes. Uses DATABASE_URL and REDIS_URL like the
platform; --json ends with a summary on one line.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import django
import redis
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fhirplatform.settings")
django.setup()

from django.conf import settings  # noqa: E402

from fhirplatform.fhir.loading import fhir_generate  # noqa: E402
from fhirplatform.fhir.models import Resource  # noqa: E402
from fhirplatform.fhir.synthetic import OBSERVATION_KINDS  # noqa: E402
from fhirplatform.schemas import tenant_schema  # noqa: E402
from scripts.bench_counts import Callers, interactions_count  # noqa: E402
from scripts.bench_limits_support import redis_counts  # noqa: E402
from scripts.bench_load import CREATE_BODY, Bench, Load, measure  # noqa: E402
from scripts.bench_minimal_wsgi import RESOURCE_TABLE  # noqa: E402
from scripts.bench_report import load_text, measured_text, report  # noqa: E402
from scripts.loopback import Server, gunicorn_server  # noqa: E402
from tenants.models import Grant, RatePlan, Tenant  # noqa: E402
from tenants.scopes import scopes_parse  # noqa: E402
from tenants.services import (  # noqa: E402
    client_create,
    rate_plan_count_only,
    rate_plan_create,
    tenant_create,
    token_issue,
)

BENCH_PLAN = "bench-unthrottled"
REFUSED_PLAN = "bench-one-read-a-minute"
CLIENT_NAME = "fhir benchmark"
REFUSED_CLIENT_NAME = "fhir benchmark, refused"
SCOPES = "system/*.cruds"
LOGS = ROOT / ".data" / "bench-fhir"


# -- The data and the callers ------------------------------------------------------------


def _tenant(slug: str, patients: int, observations: int, seed: int) -> Tenant:
    # Count-only limits: the limiter's Redis round trip is paid, nothing is refused.
    plan = rate_plan_count_only(name=BENCH_PLAN, description="Benchmarks: count, never refuse")
    tenant = Tenant.objects.filter(slug=slug).first() or tenant_create(
        slug=slug, name="FHIR benchmark", plan_name=BENCH_PLAN
    )
    tenant.plan = plan
    tenant.save(update_fields=["plan"])
    with tenant_schema(tenant):
        have = Resource.objects.filter(resource_type="Observation").count()
    if have < observations:
        print(f"generating {patients} patients / {observations} observations into {slug} ...")
        report = fhir_generate(
            tenant=tenant,
            patients=patients,
            observations_per_patient=max(1, observations // patients),
            seed=seed,
        )
        print(f"  {report.resources} resources in {report.seconds:.1f}s", flush=True)
    else:
        print(f"reusing {slug}: {have} observations already loaded", flush=True)
    return tenant


def _refused_plan() -> RatePlan:
    """One read a minute (a bucket one request deep): a flood is nearly all 429s."""
    existing = RatePlan.objects.filter(name=REFUSED_PLAN).first()
    return existing or rate_plan_create(
        name=REFUSED_PLAN,
        description="Benchmarks: refuses nearly every read",
        read_per_minute=1,
        search_per_minute=1,
        write_per_minute=1,
        history_per_minute=1,
        batch_per_minute=1,
        export_per_hour=1,
        export_poll_per_minute=1,
        concurrency=1000,
        daily_quota=2_000_000_000,
    )


def _grant(tenant: Tenant, name: str, plan: RatePlan) -> Grant:
    grant = Grant.objects.filter(tenant=tenant, client__name=name).first()
    if grant is None:
        grant = client_create(
            partner_name="Benchmark",
            tenant_slugs=[tenant.slug],
            scopes=SCOPES,
            plan_name=plan.name,
            name=name,
        ).grants[0]
    return grant


def _token(grant: Grant) -> str:
    # Tokens live at most 300 s: every measurement gets a fresh one.
    issued = token_issue(grant=grant, scopes=scopes_parse(SCOPES), auth_method="benchmark")
    return issued.access_token


# -- The run ------------------------------------------------------------------------------


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="1,000 patients, 100,000 obs")
    parser.add_argument("--patients", type=int, default=100)
    parser.add_argument("--observations", type=int, default=5_000)
    parser.add_argument("--seconds", type=int, default=6, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measure every server N times")
    parser.add_argument("--connections", "--concurrency", type=int, default=8, help="wrk's")
    parser.add_argument("--wrk-threads", type=int, default=1)
    # `make run`'s gunicorn (scripts/run.py): 2 workers (WEB_WORKERS) of 4 threads
    # (WEB_THREADS).
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--log-level", default="WARNING", help="LOG_LEVEL of Django servers")
    parser.add_argument("--count", type=int, default=20, help="requests counted per interaction")
    parser.add_argument("--sql", action="store_true", help="print what one request sent")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tenant", default=None)
    parser.add_argument("--baseline", metavar="REV", help="also read through REV's code")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.full:
        args.patients, args.observations = 1_000, 100_000
    return args


OK = frozenset({200})
ADMITTED_OR_REFUSED = frozenset({200, 429})


@dataclass(frozen=True)
class Target:
    """One row of the table: what wrk sends to which server."""

    key: str
    label: str
    server: Server
    prefix: str
    headers: Callable[[], dict[str, str]]  # called per measurement: a fresh token each time
    kind: str = "read"  # or search, variant, create
    expected: frozenset[int] = OK  # what one request answers before anything is timed

    def load(self) -> Load:
        return Load(self.kind, self.prefix, self.headers())

    def check(self, patient_id: str, code: str) -> None:
        base = self.server.url + self.prefix
        if self.kind == "create":
            body = CREATE_BODY % (patient_id, 70)
            response = requests.post(
                f"{base}/Observation", data=body, headers=self.headers(), timeout=30
            )
        else:
            path = f"Patient/{patient_id}"
            if self.kind in ("search", "variant"):
                path = f"Observation?patient={patient_id}&code=http://loinc.org|{code}"
            response = requests.get(f"{base}/{path}", headers=self.headers(), timeout=30)
        if response.status_code not in self.expected:
            raise SystemExit(f"{self.label}: {response.status_code} {response.text[:300]}")


def _headers(grant: Grant | None, *, write: bool = False) -> Callable[[], dict[str, str]]:
    def headers() -> dict[str, str]:
        made = {"Accept": "application/fhir+json"}
        if grant is not None:
            made["Authorization"] = f"Bearer {_token(grant)}"
        if write:
            made |= {"Content-Type": "application/fhir+json", "Prefer": "return=minimal"}
        return made

    return headers


def _servers(
    stack: ExitStack, args: argparse.Namespace, env: dict[str, str]
) -> tuple[Server, Server, Server, Server | None]:
    """The platform, the bare view, the minimal reader and REV's platform if asked for,
    started side by side with the same gunicorn settings."""
    # Servers importing Django side by side on a busy machine may take minutes to answer.
    size = {"workers": args.workers, "threads": args.threads, "startup_seconds": 240}
    bare_env = env | {"DJANGO_SETTINGS_MODULE": "scripts.bench_fhir_settings"}
    minimal_app = "scripts.bench_minimal_wsgi:application"
    servers = [
        gunicorn_server(env=env, log=LOGS / "platform.log", **size),
        gunicorn_server(env=bare_env, log=LOGS / "bare.log", **size),
        gunicorn_server(env=env, app=minimal_app, log=LOGS / "minimal.log", **size),
    ]
    if args.baseline:
        root = _baseline_checkout(args.baseline)
        servers.append(gunicorn_server(env=env, root=root, log=LOGS / "baseline.log", **size))
    platform, bare, minimal, *baseline = _start_together(stack, servers)
    return platform, bare, minimal, (baseline[0] if baseline else None)


def _server_environment(args: argparse.Namespace) -> dict[str, str]:
    # Refusals answered at once: wrk measures what answering one costs, not the slower
    # reading of a flooder's connection (scripts/bench_limits.py measures that).
    return dict(os.environ, LOG_LEVEL=args.log_level, LIMITS_FLOOD_DELAY_MS="0")


def _targets(
    stack: ExitStack, args: argparse.Namespace, tenant: Tenant, served: Grant, refused: Grant
) -> list[Target]:
    """Every row of the table, in the order each round measures them."""
    platform, bare, minimal, baseline = _servers(stack, args, _server_environment(args))
    fhir, reader, anonymous = f"/fhir/{tenant.slug}", _headers(served), _headers(None)
    targets = [
        Target("bare", "bare Django view", bare, f"/bench-bare/{tenant.slug}", anonymous),
        Target("read", "platform read", platform, fhir, reader),
        Target("minimal", "minimal WSGI", minimal, f"/minimal/{tenant.schema_name}", anonymous),
    ]
    if baseline is not None:
        label = f"platform read at {args.baseline}"
        targets.append(Target("read_baseline", label, baseline, fhir, reader))
    writer, refused_reader = _headers(served, write=True), _headers(refused)
    return [
        *targets,
        Target("search", "search", platform, fhir, reader, "search"),
        Target("create", "create", platform, fhir, writer, "create", frozenset({201})),
        # The first request of a minute is admitted, the others refused.
        Target(
            "refused",
            "refused read (429)",
            platform,
            fhir,
            refused_reader,
            "read",
            ADMITTED_OR_REFUSED,
        ),
    ]


def _measure_with_redis(bench: Bench, target: Target, limiter: redis.Redis) -> dict[str, float]:
    """One measurement, with the commands clients sent to the limiter's Redis server while
    it ran (Redis's own counts), per request: under load, not one request at a time."""
    before = redis_counts(limiter).sent
    result = measure(bench, target.server, target.load())
    sent = redis_counts(limiter).sent - before
    return result | {"redis_commands_per_request": sent / max(result["requests"], 1)}


def _rounds(args: argparse.Namespace, targets: list[Target], bench: Bench) -> dict[str, list]:
    """Every target measured once per round, after a short warm-up of each."""
    warm = Bench(2, bench.connections, bench.wrk_threads, bench.ids, bench.codes, bench.scratch)
    for target in targets:
        measure(warm, target.server, target.load())
    limiter = redis.Redis.from_url(settings.LIMITS_REDIS_URL)
    rounds: dict[str, list[dict[str, float]]] = {}
    for number in range(1, args.rounds + 1):
        print(f"-- round {number}, load average {load_text(os.getloadavg())}", flush=True)
        for target in targets:
            result = _measure_with_redis(bench, target, limiter)
            rounds.setdefault(target.key, []).append(result)
            print(f"  {target.label:<24} {measured_text(result)}", flush=True)
    return rounds


def main() -> None:
    args = _arguments()
    if Resource._meta.db_table != RESOURCE_TABLE:
        raise SystemExit(f"the minimal reader reads {RESOURCE_TABLE}, not the store table")
    slug = args.tenant or f"bench-{args.patients}p-{args.observations}o"
    tenant = _tenant(slug, args.patients, args.observations, args.seed)
    grant = _grant(tenant, CLIENT_NAME, tenant.plan)
    refused_grant = _grant(tenant, REFUSED_CLIENT_NAME, _refused_plan())
    with tenant_schema(tenant):
        ids = list(
            Resource.objects.filter(resource_type="Patient", deleted=False).values_list(
                "logical_id", flat=True
            )[:500]
        )
    codes = [kind[0] for kind in OBSERVATION_KINDS]
    load_before, started = os.getloadavg(), time.monotonic()
    shutil.rmtree(LOGS, ignore_errors=True)
    LOGS.mkdir(parents=True)
    print(f"server output in {LOGS.relative_to(ROOT)}/", flush=True)
    with ExitStack() as stack:
        targets = _targets(stack, args, tenant, grant, refused_grant)
        for target in targets:
            target.check(ids[0], codes[0])
        print(
            f"\n{slug}: {len(ids)} patients, wrk {args.connections} connections, gunicorn "
            f"{args.workers} workers x {args.threads} threads, {args.seconds} s per "
            f"measurement, {args.rounds} round(s)",
            flush=True,
        )
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-fhir-")))
        bench = Bench(args.seconds, args.connections, args.wrk_threads, ids, codes, scratch)
        rounds = _rounds(args, targets, bench)
    counts: dict[str, dict[str, Any]] = {}
    if args.count > 0:
        callers = Callers(
            _headers(grant)(), _headers(grant, write=True)(), _headers(refused_grant)()
        )
        counts = interactions_count(
            _server_environment(args),
            f"/fhir/{slug}",
            callers,
            ids,
            codes[0],
            args.count,
            LOGS / "counting.log",
        )
    load_after = os.getloadavg()
    medians = {key: _median_of(measured) for key, measured in rounds.items()}
    labels = {target.key: target.label for target in targets}
    summary = report(args, medians, labels, counts, (load_before, load_after))
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    if args.json:
        print(json.dumps(summary | {"tenant": slug, "rounds": rounds}))


def _start_together(
    stack: ExitStack, servers: Sequence[AbstractContextManager[Server, Any]]
) -> list[Server]:
    """Start servers side by side (each takes seconds to import Django); every one that
    started is stopped with `stack`, also when another failed to start."""
    with ThreadPoolExecutor(len(servers)) as pool:
        starting = [pool.submit(server.__enter__) for server in servers]
    started, failures = [], []
    for server, future in zip(servers, starting, strict=True):
        try:
            started.append(future.result())
            stack.push(server.__exit__)
        except Exception as failure:
            failures.append(str(failure))
    if failures:
        raise SystemExit(f"{'; '.join(failures)} (server output in {LOGS})")
    return started


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
