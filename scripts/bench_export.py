#!/usr/bin/env python
"""Bulk Data export benchmark: how fast a system-level `$export` of a tenant runs next to
PostgreSQL's own COPY of the same rows, and what one tenant's export does to another
tenant's read latency.

    .venv/bin/python scripts/bench_export.py            # about 2 minutes (+2 to make the data)
    .venv/bin/python scripts/bench_export.py --quick    # a smoke run: 10,000 resources, 1 round

Two tenants of scripts/bench_fhir.py's synthetic data on its count-only plan (every request
counted, none refused): A with about --resources resources (default 200,000: patients with
50 Observations, their Encounters, Conditions and MedicationRequests, the Organizations and
Practitioners they name), B with --b-patients patients (default 300, a few thousand
resources) whose Patient reads are uncached (a cache rule of ttl 0: every read runs its
handler and its SQL). Made once, reused by later runs. One client on each, system/*.cruds.

The platform as `make run` runs it: one gunicorn (--workers x --threads, default 2 x 4,
scripts/loopback.py) and a Celery worker of its own (prefork, concurrency 1, consuming
the `export` and default queues). Each of --rounds rounds (default 5) measures, the order
of each pair swapped every other round:

1. export throughput: (a) `GET /fhir/<A>/$export` (Prefer: respond-async), the status URL
   polled as each Retry-After says (a 429 waited out), until the 200 manifest: resources/s
   = the manifest's counts / seconds from just before the kick-off to the manifest (which
   the Retry-After's whole seconds round up), beside the job's own run time (its row's
   started_at to finished_at) and the worker's and PostgreSQL's CPU seconds; and (b)
   `COPY (SELECT content FROM <A's schema>.fhir_resource WHERE NOT deleted) TO STDOUT`
   through psycopg into a file, --copies times: rows/s;
2. interference: B's reads (--readers threads, each one GET Patient/<random id> at a time,
   --pause-ms apart) alone for as long as the round's export took, and during another of
   A's exports, those sent while its job ran (started_at to finished_at): p50/p95/p99.

Every export's files are DELETEd afterwards; the first one's are downloaded first and
checked (NDJSON lines of the manifest's type, as many as the manifest and the store count),
and its status and file URLs must be gone after the DELETE. Printed: each round, then the
medians of the rounds: export resources/s, COPY rows/s and their ratio (goal >= 0.50, on
the job's run; kick-off to manifest beside it);
B's p50/p95 alone and during, and the ratio of the p95s (goal <= 1.5); the settings, the
load average before and after, and any problem seen. Servers' output goes to
.data/bench-export/. Uses DATABASE_URL and REDIS_URL like the platform.
"""

import argparse
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("LOG_LEVEL", "WARNING")  # the services' log lines are not the report
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import django  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fhirplatform.settings")
django.setup()

from django.conf import settings  # noqa: E402
from django.db.models import Count  # noqa: E402

from fhirplatform.cache.services import cache_rule_set  # noqa: E402
from fhirplatform.fhir.export.models import ExportJob  # noqa: E402
from fhirplatform.fhir.models import Resource  # noqa: E402
from fhirplatform.schemas import tenant_schema  # noqa: E402
from scripts.bench_audit import _postmaster_pid  # noqa: E402
from scripts.bench_export_support import (  # noqa: E402
    CopyRun,
    ExportRun,
    ExportUnavailable,
    Headers,
    Reads,
    Worker,
    celery_worker,
    copy_to_file,
    export_delete,
    export_files_check,
    export_run,
    paced_reads,
    reads_text,
)
from scripts.bench_fhir import _grant, _server_environment, _start_together, _tenant, _token  # noqa: E402
from scripts.bench_load import tree_cpu_seconds  # noqa: E402
from scripts.bench_report import load_text  # noqa: E402
from scripts.loopback import gunicorn_server  # noqa: E402
from tenants.models import Grant, Tenant  # noqa: E402

LOGS = ROOT / ".data" / "bench-export"
OBSERVATIONS_PER_PATIENT = 50
B_OBSERVATIONS_PER_PATIENT = 10
EXPORT_GOAL = 0.50  # export resources/s over COPY rows/s, at least
P95_GOAL = 1.5  # B's read p95 during A's export over alone, at most
CLIENT = "export benchmark"
# The export's settings (fhirplatform/settings.py), printed with the results.
EXPORT_SETTINGS = (
    "EXPORT_POLL_SECONDS",
    "EXPORT_BATCH_ROWS",
    "EXPORT_FILE_MAX_RESOURCES",
    "EXPORT_YIELD_SECONDS",
    "LIMITS_ADAPTIVE_MAX",
    "EXPORT_DIR",
)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="10,000 resources, 1 round")
    parser.add_argument("--resources", type=int, default=None, help="A's, about (200,000)")
    parser.add_argument("--b-patients", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--readers", type=int, default=2, help="B's reader threads")
    parser.add_argument("--pause-ms", type=float, default=10.0, help="between a reader's GETs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--copies", type=int, default=3, help="COPYs per round")
    parser.add_argument("--timeout", type=float, default=600.0, help="an export's, seconds")
    parser.add_argument(
        "--poll-seconds", type=int, default=None, help="EXPORT_POLL_SECONDS (the Retry-After)"
    )
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.quick:
        args.rounds = 1
    if args.resources is None:
        args.resources = 10_000 if args.quick else 200_000
    return args


def _tenants(args: argparse.Namespace) -> tuple[Tenant, Tenant]:
    """A (exported) and B (read): made once, reused while their sizes are asked for."""
    # One patient's record: the patient, 50 observations, 5 encounters, 1-3 conditions and
    # 1-2 medication requests (fhirplatform/fhir/synthetic.py).
    per_patient = 1 + OBSERVATIONS_PER_PATIENT * 1.1 + 2 + 1.5
    patients = max(10, round(args.resources / per_patient))
    observations = patients * OBSERVATIONS_PER_PATIENT
    a = _tenant(f"bx-a-{patients}p-{observations}o", patients, observations, args.seed)
    b_observations = args.b_patients * B_OBSERVATIONS_PER_PATIENT
    b = _tenant(
        f"bx-b-{args.b_patients}p-{b_observations}o",
        args.b_patients,
        b_observations,
        args.seed + 1,
    )
    cache_rule_set(tenant=b, resource_type="Patient", ttl_seconds=0)
    return a, b


def _stored(tenant: Tenant) -> dict[str, int]:
    """Resources per type that an export of everything must hold (deleted ones left out)."""
    with tenant_schema(tenant):
        rows = (
            Resource.objects.filter(deleted=False)
            .values_list("resource_type")
            .annotate(n=Count("id"))
        )
        return {kind: n for kind, n in rows}


def _patient_ids(tenant: Tenant) -> list[str]:
    with tenant_schema(tenant):
        return list(
            Resource.objects.filter(resource_type="Patient", deleted=False).values_list(
                "logical_id", flat=True
            )
        )


def _bearer(grant: Grant) -> Headers:
    """One token for a whole measurement (tokens live 300 s; a measurement takes less)."""
    token = _token(grant)
    return lambda: {"Authorization": f"Bearer {token}"}


def _job_window(tenant: Tenant, job_id: str) -> tuple[float, float, float] | None:
    """When the job was created, started and finished (epoch seconds), from its row."""
    with tenant_schema(tenant):
        job = ExportJob.objects.filter(pk=job_id).first()
    if job is None or job.started_at is None or job.finished_at is None:
        return None
    return job.created_at.timestamp(), job.started_at.timestamp(), job.finished_at.timestamp()


class Meter:
    """CPU seconds of the worker's process tree and PostgreSQL's over a measurement."""

    def __init__(self, worker: Worker) -> None:
        self.worker_pid, self.postmaster = worker.pid, _postmaster_pid()

    def now(self) -> tuple[float, float]:
        return (
            tree_cpu_seconds(self.worker_pid, with_exited=True),
            tree_cpu_seconds(self.postmaster, with_exited=True),
        )


def _export(
    tenant: Tenant, base: str, headers: Headers, meter: Meter, timeout: float
) -> tuple[ExportRun, dict[str, float]]:
    """One system-level export, timed, with the CPU it cost and its job's own times."""
    before = meter.now()
    run = export_run(base, headers, timeout=timeout)
    after = meter.now()
    extra = {"worker_cpu": after[0] - before[0], "db_cpu": after[1] - before[1]}
    window = _job_window(tenant, run.job_id)
    if window is not None:
        created, began, finished = window
        extra |= {"queued": began - created, "ran": finished - began}
        extra |= {"started_at": began, "finished_at": finished}
    return run, extra


def _export_text(run: ExportRun, extra: dict[str, float]) -> str:
    text = (
        f"{run.count:,} resources in {run.seconds:.2f} s = {run.per_second:,.0f} resources/s"
        f"  (kick-off {1000 * run.kickoff_seconds:.0f} ms, {run.polls} polls"
        f"{f', {run.throttled} x 429' if run.throttled else ''}"
        f"{f', {run.reconnects} closed under it' if run.reconnects else ''}, last wait "
        f"{run.last_wait_seconds:.2f} s; CPU worker {extra['worker_cpu']:.2f} s, "
        f"PostgreSQL {extra['db_cpu']:.2f} s"
    )
    if "ran" in extra:
        ran = extra["ran"]
        text += (
            f"; job queued {extra['queued']:.2f} s, ran {ran:.2f} s = "
            f"{run.count / ran if ran else 0:,.0f} resources/s"
        )
    return text + ")"


def _probe(base: str, headers: Headers) -> str | None:
    """A small export (Organizations) end to end; None if the export is not there yet."""
    try:
        run = export_run(base, headers, path="$export?_type=Organization", timeout=120)
    except ExportUnavailable as refused:
        return str(refused)
    export_delete(run, headers, check=False)
    return None


def _checked(run: ExportRun, headers: Headers, stored: dict[str, int], problems: list[str]) -> None:
    """The first export: its files downloaded and checked, then DELETEd and gone."""
    check = export_files_check(run, headers, stored)
    print(
        f"     files: {sum(check.lines.values()):,} NDJSON lines, {check.size / 1e6:.1f} MB "
        f"downloaded in {check.seconds:.2f} s; X-Progress seen: {run.progress[:6]}; "
        f"Retry-After seen: {sorted(set(run.retry_after))}",
        flush=True,
    )
    problems.extend(check.problems + export_delete(run, headers, check=True))


@dataclass
class ExportBench:
    """The run's servers, tenants and settings, and what each measurement found."""

    args: argparse.Namespace
    a: Tenant
    b: Tenant
    a_grant: Grant
    b_grant: Grant
    a_base: str
    b_base: str
    b_ids: list[str]
    stored: dict[str, int]
    meter: Meter
    database_url: str
    exports: list[tuple[ExportRun, dict[str, float]]] = field(default_factory=list)
    during_exports: list[tuple[ExportRun, dict[str, float]]] = field(default_factory=list)
    copies: list[CopyRun] = field(default_factory=list)
    alone: list[Reads] = field(default_factory=list)
    during: list[Reads] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def reads(self) -> AbstractContextManager[Reads]:
        headers = _bearer(self.b_grant)()
        pause = self.args.pause_ms / 1000
        return paced_reads(self.b_base, self.b_ids, headers, readers=self.args.readers, pause=pause)

    def export(self) -> None:
        headers = _bearer(self.a_grant)
        run, extra = _export(self.a, self.a_base, headers, self.meter, self.args.timeout)
        self.exports.append((run, extra))
        print(f"  export A     {_export_text(run, extra)}", flush=True)
        if len(self.exports) == 1:
            _checked(run, headers, self.stored, self.problems)
        else:
            self.problems.extend(export_delete(run, headers, check=False))

    def copy(self) -> None:
        """--copies COPYs back to back (one takes a fraction of a second)."""
        copied = [
            copy_to_file(
                self.database_url, self.a.schema_name, Resource._meta.db_table, LOGS / "copy"
            )
            for _ in range(self.args.copies)
        ]
        self.copies.extend(copied)
        rates = sorted(c.per_second for c in copied)
        print(
            f"  COPY A       {copied[0].rows:,} rows in {_median([c.seconds for c in copied]):.2f}"
            f" s = {_median(rates):,.0f} rows/s (median of {len(copied)}: {rates[0]:,.0f} to "
            f"{rates[-1]:,.0f}; {copied[0].size / 1e6:.1f} MB)",
            flush=True,
        )

    def reads_alone(self) -> None:
        """B's reads for as long as the last export took."""
        seconds = max(self.exports[-1][0].seconds if self.exports else 8.0, 3.0)
        with self.reads() as reads:
            time.sleep(seconds)
        self.alone.append(reads)
        print(f"  B alone      {reads_text(reads)}", flush=True)

    def reads_during(self) -> None:
        """B's reads from just before A's kick-off to A's manifest; those sent while the job
        ran are the measurement (the last poll's wait is no export)."""
        headers = _bearer(self.a_grant)
        with self.reads() as reads:
            run, extra = _export(self.a, self.a_base, headers, self.meter, self.args.timeout)
        self.during_exports.append((run, extra))
        self.problems.extend(export_delete(run, headers, check=False))
        print(f"  B during     {reads_text(reads)}", flush=True)
        if "started_at" in extra:  # the reads while the job ran, not while it was polled
            reads = reads.within(extra["started_at"], extra["finished_at"])
            print(f"    job ran    {reads_text(reads)}", flush=True)
        self.during.append(reads)
        print(f"    its export {_export_text(run, extra)}", flush=True)

    def round(self, number: int, with_export: bool) -> None:
        """Each pair in one order on odd rounds, in the other on even ones."""
        print(f"-- round {number}, load average {load_text(os.getloadavg())}", flush=True)
        first: list[Callable[[], None]] = [self.export, self.copy] if with_export else [self.copy]
        second: list[Callable[[], None]] = [self.reads_alone]
        if with_export:
            second.append(self.reads_during)
        for steps in (first, second):
            for step in steps if number % 2 else reversed(steps):
                step()


def main() -> None:
    args = _arguments()
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        raise SystemExit("DATABASE_URL is not set (the COPY connects with it)")
    started, load_before = time.monotonic(), os.getloadavg()
    a, b = _tenants(args)
    stored, b_ids = _stored(a), _patient_ids(b)
    shutil.rmtree(LOGS, ignore_errors=True)
    LOGS.mkdir(parents=True)
    env = _server_environment(args)
    if args.poll_seconds is not None:
        env["EXPORT_POLL_SECONDS"] = str(args.poll_seconds)
    with ExitStack() as stack:
        size = {"workers": args.workers, "threads": args.threads, "startup_seconds": 240}
        (server,) = _start_together(
            stack, [gunicorn_server(env=env, log=LOGS / "platform.log", **size)]
        )
        worker = stack.enter_context(celery_worker(env, LOGS / "worker.log", ROOT))
        bench = ExportBench(
            args, a, b, _grant(a, CLIENT, a.plan), _grant(b, CLIENT, b.plan),
            f"{server.url}/fhir/{a.slug}", f"{server.url}/fhir/{b.slug}",
            b_ids, stored, Meter(worker), database_url,
        )  # fmt: skip
        print(
            f"A {a.slug}: {sum(stored.values()):,} resources ("
            + ", ".join(f"{kind} {n:,}" for kind, n in sorted(stored.items()))
            + f"); B {b.slug}: {len(b_ids)} patients, reads uncached\n"
            f"gunicorn {args.workers} workers x {args.threads} threads, Celery worker prefork "
            f"x 1 ({worker.name}); B: {args.readers} readers, {args.pause_ms:g} ms apart; "
            f"{args.rounds} round(s); load average {load_text(load_before)}\n"
            f"settings: {_settings_text(env)}",
            flush=True,
        )
        with bench.reads():
            time.sleep(2)  # warm-up
        missing = _probe(bench.a_base, _bearer(bench.a_grant))
        if missing is not None:
            print(f"NO EXPORT: the export is not measured ({missing})", flush=True)
        for number in range(1, args.rounds + 1):
            bench.round(number, with_export=missing is None)
    load_after = os.getloadavg()
    _report(args, bench)
    if bench.problems:
        print("\nPROBLEMS seen:\n  " + "\n  ".join(bench.problems))
    print(
        f"\nload average before {load_text(load_before)}, after {load_text(load_after)}; "
        f"total {time.monotonic() - started:.0f} s"
    )


def _settings_text(env: dict[str, str]) -> str:
    """The servers' values: the environment they were given, else this process's."""
    return ", ".join(
        f"{name} {env.get(name, getattr(settings, name))}"
        for name in EXPORT_SETTINGS
        if hasattr(settings, name)
    )


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _report(args: argparse.Namespace, bench: ExportBench) -> None:
    exports, during_exports, copies = bench.exports, bench.during_exports, bench.copies
    alone, during = bench.alone, bench.during
    print(f"\nmedians of {args.rounds} round(s)")
    copy_rate = _median([c.per_second for c in copies])
    print(f"  COPY ... TO STDOUT, to a file   {copy_rate:10,.0f} rows/s")
    if exports:
        rate = _median([run.per_second for run, _ in exports])
        ran = [run.count / extra["ran"] for run, extra in exports if extra.get("ran")]
        print(f"  $export, kick-off to manifest  {rate:10,.0f} resources/s")
        if ran:
            print(f"  $export, the job's run alone   {_median(ran):10,.0f} resources/s")
        loaded = _median([run.per_second for run, _ in during_exports])
        print(f"  $export while B reads          {loaded:10,.0f} resources/s")
        # The goal is the export's own rate: its job's run, every file written, stored and
        # recorded. What a client sees adds the wait for its next poll, which whole-second
        # Retry-Afters round up (a second or two on an export this size).
        if ran:
            ratio = _median(ran) / copy_rate
            verdict = "met" if ratio >= EXPORT_GOAL else "NOT MET"
            goal = f"goal >= {EXPORT_GOAL:.2f}: {verdict}"
            print(f"  export (its job's run) / COPY: {ratio:.3f}  ({goal})")
        print(f"  kick-off to manifest / COPY:   {rate / copy_rate:.3f}  (polls included)")
        counts = {run.count for run, _ in exports} | {c.rows for c in copies}
        if len(counts) > 1:
            print(f"  (exported and copied counts differ: {sorted(counts)})")
    for label, measured in (("alone", alone), ("while A's job ran", during)):
        if measured:
            p50 = _median([r.p(0.50) for r in measured])
            p95 = _median([r.p(0.95) for r in measured])
            print(f"  B reads {label:<18} p50 {1000 * p50:6.2f} ms  p95 {1000 * p95:6.2f} ms")
    if during:
        p95_ratio = _median([r.p(0.95) for r in during]) / _median([r.p(0.95) for r in alone])
        rounds = ", ".join(
            f"{d.p(0.95) / a.p(0.95):.2f}" for a, d in zip(alone, during, strict=True)
        )
        verdict = "met" if p95_ratio <= P95_GOAL else "NOT MET"
        print(
            f"  B p95 during / alone: {p95_ratio:.2f}  (goal <= {P95_GOAL:.1f}: {verdict}; "
            f"each round: {rounds})"
        )


if __name__ == "__main__":
    main()
