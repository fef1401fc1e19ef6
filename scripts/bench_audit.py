#!/usr/bin/env python
"""Audit trail benchmark: what writing every access's event costs the hot path, how many
events the platform writes per second, and how fast audit_verify checks a trail.

    .venv/bin/python scripts/bench_audit.py            # about 2 minutes
    .venv/bin/python scripts/bench_audit.py --quick    # a smoke run

Two gunicorns side by side (--workers x --threads, default 2 x 4 as `make run`) on the
same database and tenant: the platform, and the same platform without its audit writes
(scripts/bench_audit_settings.py, a setting no other settings module may turn on). The
tenant (scripts/bench_fhir.py's synthetic data, on a count-only plan) has its Patient and
Observation cache rules at ttl 0, so every read and search runs its handler; a cached
read is measured too, on a tenant whose rules keep entries for the whole run.

Each of --rounds rounds runs wrk (--seconds each, --connections) against both servers, in
turn: read, search (Observation?patient&code&date over --search-ids patients), cached
read. Printed, medians of the rounds: p50/p99 and requests/s of each, and the ratio
audited / unaudited (goal: at most 1.10 at p50), with the CPU each request cost the
server (gunicorn's process tree) and the database (PostgreSQL's); the events the audited
server wrote per second of measuring (the trail's count before and after); then the
trails are sealed and audit_verify run on them (events verified per second), and the
uncached tenant's sealed blocks are archived (AUDIT_ARCHIVE_DIR) and the trail verified
with its archives' files (events per second of each). Load average before and after.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

os.environ.setdefault("LOG_LEVEL", "WARNING")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import django  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fhirplatform.settings")
django.setup()

from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402

from audit.archiving import trail_archives  # noqa: E402
from audit.models import AuditEvent  # noqa: E402
from audit.tasks import audit_seal_all  # noqa: E402
from audit.verification import audit_verify  # noqa: E402
from fhirplatform.cache.services import cache_rule_set  # noqa: E402
from fhirplatform.fhir.models import Resource  # noqa: E402
from fhirplatform.fhir.synthetic import OBSERVATION_KINDS  # noqa: E402
from fhirplatform.schemas import tenant_schema  # noqa: E402
from scripts.bench_fhir import (  # noqa: E402
    Target,
    _grant,
    _headers,
    _median_of,
    _server_environment,
    _start_together,
    _tenant,
)
from scripts.bench_load import Bench, measure, tree_cpu_seconds  # noqa: E402
from scripts.bench_report import load_text  # noqa: E402
from scripts.loopback import gunicorn_server  # noqa: E402
from tenants.models import Tenant  # noqa: E402

LOGS = ROOT / ".data" / "bench-audit"
CODES = [kind[0] for kind in OBSERVATION_KINDS]
GOAL = 1.10


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--patients", type=int, default=100)
    parser.add_argument("--observations", type=int, default=2_000)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--warm", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--search-ids", type=int, default=20)
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.warm, args.rounds = 2, 1, 1
    return args


def _tenants(args: argparse.Namespace) -> tuple[Tenant, Tenant]:
    """The uncached tenant (rules of ttl 0) and the cached one (entries outlive the run)."""
    size = f"{args.patients}p-{args.observations}o"
    uncached = _tenant(f"ba-off-{size}", args.patients, args.observations, args.seed)
    cached = _tenant(f"ba-on-{size}", args.patients, args.observations, args.seed)
    for resource_type in ("Patient", "Observation"):
        cache_rule_set(tenant=uncached, resource_type=resource_type, ttl_seconds=0)
        cache_rule_set(tenant=cached, resource_type=resource_type, ttl_seconds=3600)
    return uncached, cached


def _postmaster_pid() -> int:
    """PostgreSQL's server process (every backend's parent): its tree's CPU is the
    database's share of what a measurement cost."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (backend,) = cursor.fetchone()
    for line in Path(f"/proc/{backend}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise RuntimeError("no parent of the database backend")


def _events(tenant: Tenant) -> int:
    with tenant_schema(tenant):
        return AuditEvent.objects.count()


def _archive(tenant: Tenant) -> None:
    """Archive every sealed block of the trail (into AUDIT_ARCHIVE_DIR, where the trail's
    earlier archives are), then verify the trail with its archives' files: both rates."""
    started = time.perf_counter()
    archives = trail_archives(tenant=tenant, cutoff=timezone.now(), actor="bench_audit")
    archived = sum(archive.events for archive in archives)
    seconds = time.perf_counter() - started
    print(
        f"audit_archive {tenant.slug}: {archived:,} events in {seconds:.2f} s = "
        f"{archived / seconds if seconds else 0:,.0f} events/s"
    )
    with tenant_schema(tenant):
        report = audit_verify(schema=tenant.schema_name, files=True)
    print(
        f"audit_verify --archive {tenant.slug}: {report.archived_events:,} archived and "
        f"{report.events:,} live events in {report.seconds:.2f} s = "
        f"{report.events_per_second:,.0f} events/s, "
        f"{'OK' if report.ok else 'FAILED: ' + report.problems[0]}"
    )


def main() -> None:
    args = _arguments()
    started, load_before = time.monotonic(), os.getloadavg()
    uncached, cached = _tenants(args)
    with tenant_schema(uncached):
        ids = sorted(
            Resource.objects.filter(resource_type="Patient", deleted=False).values_list(
                "logical_id", flat=True
            )[:500]
        )
    LOGS.mkdir(parents=True, exist_ok=True)
    env = _server_environment(args) | {"LIMITS_REFUSALS_PER_IP": "1000000/m"}
    size = {"workers": args.workers, "threads": args.threads, "startup_seconds": 240}
    off_env = env | {"DJANGO_SETTINGS_MODULE": "scripts.bench_audit_settings"}
    with ExitStack() as stack:
        audited, unaudited = _start_together(
            stack,
            [
                gunicorn_server(env=env, log=LOGS / "audited.log", **size),
                gunicorn_server(env=off_env, log=LOGS / "unaudited.log", **size),
            ],
        )
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-audit-")))
        readers = {
            t.slug: _headers(_grant(t, "audit bench reader", t.plan)) for t in (uncached, cached)
        }
        targets = []
        for name, server in (("audited", audited), ("unaudited", unaudited)):
            for kind, tenant, label in (
                ("read", uncached, "read"),
                ("search", uncached, "search"),
                ("read", cached, "cached read"),
            ):
                key = f"{label}|{name}"
                targets.append(
                    Target(key, f"{label}, {name}", server, f"/fhir/{tenant.slug}",
                           readers[tenant.slug], kind)
                )  # fmt: skip
        for target in targets:
            target.check(ids[0], CODES[0])
        print(
            f"{len(ids)} patients, wrk {args.connections} connections, gunicorn "
            f"{args.workers}x{args.threads}, {args.seconds} s per measurement, {args.rounds} "
            f"round(s); load average {load_text(load_before)}",
            flush=True,
        )
        bench = Bench(args.seconds, args.connections, 1, ids, CODES, scratch)
        searches = Bench(args.seconds, args.connections, 1, ids[: args.search_ids], CODES, scratch)
        warm = Bench(args.warm, args.connections, 1, ids, CODES, scratch)
        for target in targets:
            measure(warm, target.server, target.load())
        rounds: dict[str, list[dict[str, float]]] = {}
        postmaster = _postmaster_pid()
        written = measured_seconds = 0.0
        for number in range(1, args.rounds + 1):
            print(f"-- round {number}, load average {load_text(os.getloadavg())}", flush=True)
            for target in targets:
                runs = searches if target.kind == "search" else bench
                before = _events(uncached) + _events(cached)
                database_before = tree_cpu_seconds(postmaster)
                result = measure(runs, target.server, target.load())
                result["db_cpu_ms_per_request"] = (
                    1000 * (tree_cpu_seconds(postmaster) - database_before) / result["requests"]
                )
                if target.key.endswith("|audited"):
                    written += _events(uncached) + _events(cached) - before
                    measured_seconds += runs.seconds
                rounds.setdefault(target.key, []).append(result)
                print(
                    f"  {target.label:<24} {result['rps']:6.0f} req/s  p50 "
                    f"{result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms  CPU per "
                    f"request: server {result['cpu_ms_per_request']:.3f} ms, database "
                    f"{result['db_cpu_ms_per_request']:.3f} ms",
                    flush=True,
                )
    medians = {key: _median_of(results) for key, results in rounds.items()}
    print(f"\nmedians of {args.rounds} round(s), audited / unaudited:")
    ratios = []
    for label in ("read", "search", "cached read"):
        on, off = medians[f"{label}|audited"], medians[f"{label}|unaudited"]
        ratio = on["p50_ms"] / off["p50_ms"]
        ratios.append(ratio)
        print(
            f"  {label:<12} p50 {on['p50_ms']:6.2f} / {off['p50_ms']:6.2f} ms = x{ratio:.3f}  "
            f"p99 {on['p99_ms']:6.2f} / {off['p99_ms']:6.2f} ms  req/s "
            f"{on['rps']:6.0f} / {off['rps']:6.0f}  "
            f"{'met' if ratio <= GOAL else 'NOT MET'} (goal <= {GOAL:.2f} at p50)"
        )
        print(
            f"  {'':<12} CPU per request: server {on['cpu_ms_per_request']:.3f} / "
            f"{off['cpu_ms_per_request']:.3f} ms, database {on['db_cpu_ms_per_request']:.3f} / "
            f"{off['db_cpu_ms_per_request']:.3f} ms"
        )
    print(f"\nevents written by the audited server: {written / measured_seconds:,.0f} per second")
    sealed = audit_seal_all()
    print(f"sealed now: {sum(sealed.values()):,} events")
    for tenant in (uncached, cached):
        with tenant_schema(tenant):
            report = audit_verify(schema=tenant.schema_name)
        print(
            f"audit_verify {tenant.slug}: {report.events:,} events, {report.seals} seals in "
            f"{report.seconds:.2f} s = {report.events_per_second:,.0f} events/s, "
            f"{'OK' if report.ok else 'FAILED: ' + report.problems[0]}"
        )
    _archive(uncached)
    print(
        f"\nload average before {load_text(load_before)}, after {load_text(os.getloadavg())}; "
        f"total {time.monotonic() - started:.0f} s; worst p50 ratio x{max(ratios):.3f}, "
        f"median x{statistics.median(ratios):.3f}"
    )


if __name__ == "__main__":
    main()
