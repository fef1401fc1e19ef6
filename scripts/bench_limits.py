"""Rate-limit benchmark: what a decision costs, how exact the bound is, noisy neighbours.

Runs in a scratch database (created and dropped here) on the PostgreSQL of DATABASE_URL,
with the limiter on a redis-server of its own (so that Redis's own command counts are this
benchmark's alone; REDIS_URL still serves everything else):

    set -a; . .data/services.env; set +a
    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/fp_limits \\
    REDIS_URL=redis://127.0.0.1:6379/11 .venv/bin/python scripts/bench_limits.py [--big]

Prints:
  1. limiter decision cost in-process (p50/p99 of limit_admit, and of release) next to a
     Redis PING in the same run; Redis round trips per decision counted by Redis itself
     (INFO commandstats); a refusal decided by Redis next to one from the refusal memo;
  2. admitted vs bound (burst + rate x elapsed) for one client flooding a gunicorn with
     several workers and threads;
  3. noisy neighbour: tenant B's p50/p95 and 429 count, alone and while tenant A floods
     at 10x and more of its quota (Python load generator);
  4. unpaced flood: tenant A floods as fast as it can from 8 connections (wrk, which costs
     far less CPU than a Python client), ignoring Retry-After. In interleaved rounds: B's
     p50/p95 alone and under the flood, A's refusals/s, server CPU (gunicorn master and
     workers, utime+stime from /proc) per refused request and per served read, and Redis
     commands per admitted request counted by Redis (INFO commandstats). 4a with the
     server as configured (a flooder's kept-alive connections read late:
     LIMITS_FLOOD_DELAY_MS), 4b on a second server answering every refusal at once (what
     answering one costs, and the flood at full speed).
The load average is printed at the start and after every section; the server's own log
(a warning per 429) goes to a file. Section 4 lives in bench_limits_flood.py, what the
sections share in bench_limits_support.py.
Default runs take about two minutes; --big runs longer floods and more decisions.
"""

import argparse
import contextlib
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import psycopg
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.bench_limits_flood import bench_unpaced  # noqa: E402
from scripts.bench_limits_support import (  # noqa: E402
    create_patient,
    latencies,
    load_average,
    make_client,
    ms,
    pct,
    private_redis,
    redis_counts,
)
from scripts.loopback import gunicorn_server  # noqa: E402


def scratch_url(base_url: str, name: str) -> str:
    return urlunparse(urlparse(base_url)._replace(path="/" + name))


def admin_execute(base_url: str, sql: str) -> None:
    with psycopg.connect(scratch_url(base_url, "postgres"), autocommit=True) as conn:
        conn.execute(sql)


def setup_django(database_url: str, limits_redis_url: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ["LIMITS_REDIS_URL"] = limits_redis_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fhirplatform.settings")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate_schemas", shared=True, verbosity=0, interactive=False)


def bench_decisions(decisions: int) -> None:
    from fhirplatform.limits.codes import EndpointClass
    from fhirplatform.limits.engine import limit_admit
    from fhirplatform.limits.store import limiter_redis
    from tenants.models import Grant
    from tenants.tokens import Caller

    # Only the client's and the tenant's buckets are measured here, never refused.
    grant, _ = make_client("bench-a", "bench-generous", read_per_minute=10**9)
    grant = Grant.objects.select_related("client", "tenant__plan", "plan").get(pk=grant.pk)
    caller = Caller(
        tenant=grant.tenant, client=grant.client, grant=grant, scopes=[], token_id=uuid.uuid4().hex
    )
    client = limiter_redis()  # the limiter's own connection pool: PING and EVALSHA alike

    for _ in range(200):  # warm: scripts loaded, profile cached, connections open
        limit_admit(
            caller=caller, endpoint_class=EndpointClass.READ, resource_type="Patient"
        ).release()
    pings = []
    for _ in range(decisions):
        started = time.perf_counter()
        client.ping()
        pings.append(time.perf_counter() - started)
    admits, releases = [], []
    time.sleep(0.1)  # what the warm-up left queued is sent
    before = redis_counts(client)
    for _ in range(decisions):
        started = time.perf_counter()
        admission = limit_admit(
            caller=caller, endpoint_class=EndpointClass.READ, resource_type="Patient"
        )
        middle = time.perf_counter()
        admission.release()
        releases.append(time.perf_counter() - middle)
        admits.append(middle - started)
    time.sleep(0.1)  # the last release is sent too
    after = redis_counts(client)
    held = [
        limit_admit(caller=caller, endpoint_class=EndpointClass.READ, resource_type="Patient")
        for _ in range(50)
    ]
    evalsha_admits_only = (redis_counts(client).evalsha - after.evalsha) / 50
    for admission in held:
        admission.release()

    print(
        "1. Limiter decision cost (in-process, 2 rate buckets, 2 daily quotas, 2 slots, overload)"
    )
    print(f"   decisions measured            : {decisions}")
    print(f"   Redis PING        p50 / p99   : {ms(pct(pings, 0.5))} / {ms(pct(pings, 0.99))}")
    print(f"   limit_admit       p50 / p99   : {ms(pct(admits, 0.5))} / {ms(pct(admits, 0.99))}")
    print(
        f"   release           p50 / p99   : {ms(pct(releases, 0.5))} / {ms(pct(releases, 0.99))}"
    )
    print(f"   admit minus PING  p50         : {ms(pct(admits, 0.5) - pct(pings, 0.5))}")
    print(
        f"   Redis round trips per decision: {evalsha_admits_only:.2f} (EVALSHA, counted by Redis)"
    )
    print(
        f"   Redis calls per admit+release : {(after.sent - before.sent) / decisions:.2f}"
        f" sent (EVALSHA {(after.evalsha - before.evalsha) / decisions:.2f}), and"
        f" {(after.inside - before.inside) / decisions:.1f} commands inside the scripts"
    )


def bench_refusal_cost(decisions: int) -> None:
    """A refusal decided by Redis next to one answered from the refusal memo."""
    from django.conf import settings

    from fhirplatform.errors import FhirError
    from fhirplatform.limits import engine
    from fhirplatform.limits.codes import EndpointClass
    from fhirplatform.limits.store import limiter_redis
    from tenants.models import Grant
    from tenants.tokens import Caller

    grant, _ = make_client("bench-a", "bench-120", read_per_minute=120)
    grant = Grant.objects.select_related("client", "tenant__plan", "plan").get(pk=grant.pk)
    caller = Caller(
        tenant=grant.tenant, client=grant.client, grant=grant, scopes=[], token_id=uuid.uuid4().hex
    )
    request: dict[str, Any] = dict(
        caller=caller, endpoint_class=EndpointClass.READ, resource_type="Patient"
    )
    client = limiter_redis()

    def refusals(label: str, memo_seconds: int) -> None:
        settings.LIMITS_REFUSAL_MEMO_SECONDS = memo_seconds
        timings = []
        before = redis_counts(client).evalsha
        for _ in range(decisions):
            started = time.perf_counter()
            try:
                engine.limit_admit(**request).release()
            except FhirError:
                timings.append(time.perf_counter() - started)
        calls = (redis_counts(client).evalsha - before) / max(1, len(timings))
        print(
            f"   {label:<30}: p50 / p99 {ms(pct(timings, 0.5))} / {ms(pct(timings, 0.99))}"
            f", EVALSHA per refusal {calls:.3f}"
        )

    print("   refusals (one client past its 2/s):")
    refusals("refused by Redis", 0)
    refusals("refused from the memo", 1)
    known = getattr(engine, "limit_refusal_known", None)
    if known is None:
        print("   limit_refusal_known           : (not in this version)")
        return
    timings = []
    for _ in range(decisions):
        started = time.perf_counter()
        refused = known(**request)
        elapsed = time.perf_counter() - started
        if refused is not None:
            timings.append(elapsed)
            continue
        # The memo lapsed (it lives a second): Redis refuses, and the memo learns again.
        with contextlib.suppress(FhirError):
            engine.limit_admit(**request).release()
    print(
        f"   limit_refusal_known (no I/O)  : p50 / p99 {ms(pct(timings, 0.5))} / "
        f"{ms(pct(timings, 0.99))} ({len(timings)} of {decisions} answered)"
    )


def flood(
    url: str, token: str, seconds: float, threads: int, rate: float | None = None
) -> tuple[list[int], float]:
    """GET url from `threads` threads for `seconds`: as fast as possible, or paced to `rate`/s."""
    statuses: list[int] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    gap = threads / rate if rate else 0.0

    def worker() -> None:
        next_at = time.monotonic()
        with requests.Session() as session:
            while time.monotonic() < stop_at:
                status = session.get(
                    url, headers={"Authorization": f"Bearer {token}"}, timeout=10
                ).status_code
                with lock:
                    statuses.append(status)
                next_at += gap
                time.sleep(max(0.0, next_at - time.monotonic()))

    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(threads):
            pool.submit(worker)
    return statuses, time.monotonic() - started


def warm_up(base: str, connections: int) -> None:
    """Every worker's first requests load modules and open connections: not measured."""
    _, token = make_client("bench-a", "bench-generous", read_per_minute=10**9)
    url = f"{base}/fhir/bench-a/Patient/{create_patient(base, 'bench-a', token)}"

    def reads() -> None:
        for _ in range(10):
            requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    with ThreadPoolExecutor(connections) as pool:
        for _ in range(connections):
            pool.submit(reads)


def bench_accuracy(
    base: str, seconds: float, threads: int, workers: int, server_threads: int
) -> None:
    _, token = make_client("bench-a", "bench-120", read_per_minute=120)  # 2/s, depth 20
    url = f"{base}/fhir/bench-a/Patient/{create_patient(base, 'bench-a', token)}"
    statuses, elapsed = flood(url, token, seconds, threads)
    admitted = statuses.count(200)
    bound = 20 + 2 * elapsed
    print(
        f"2. Admitted vs bound ({workers} gunicorn workers x {server_threads} threads, "
        f"{threads} client threads, {elapsed:.1f} s)"
    )
    print(f"   requests sent                 : {len(statuses)} ({len(statuses) / elapsed:.0f}/s)")
    print(f"   admitted (200)                : {admitted}")
    print(f"   bound = 20 + 2/s x elapsed    : {bound:.1f}")
    print(f"   admitted / bound              : {admitted / bound:.3f}")
    print(
        f"   refused (429)                 : {statuses.count(429)}; other: "
        f"{len(statuses) - admitted - statuses.count(429)}"
    )


def bench_noisy(base: str, seconds: float, threads: int, samples: int) -> None:
    # B reads well within its own quota (100/s): any 429 it gets would be A's doing.
    _, token_b = make_client("bench-b", "bench-b-6000", read_per_minute=6000)
    url_b = f"{base}/fhir/bench-b/Patient/{create_patient(base, 'bench-b', token_b)}"
    quiet, quiet_status = latencies(url_b, token_b, samples)
    print("3. Noisy neighbour (tenant A's client quota 2/s; tenant B reads every ~10 ms)")
    print(
        f"   tenant B alone               p50 / p95 : {ms(statistics.median(quiet))} / "
        f"{ms(pct(quiet, 0.95))}  429s: {quiet_status.count(429)} of {samples}"
    )
    for label, rate in (("A paced at 10x quota", 20.0), ("A unpaced, 4 threads", None)):
        _, token_a = make_client("bench-a", "bench-120", read_per_minute=120)
        url_a = f"{base}/fhir/bench-a/Patient/{create_patient(base, 'bench-a', token_a)}"
        result: dict[str, tuple[list[int], float]] = {}
        flooder = threading.Thread(
            target=lambda out=result, url=url_a, token=token_a, rate=rate: out.update(
                a=flood(url, token, seconds, threads, rate)
            )
        )
        flooder.start()
        time.sleep(0.3)
        noisy, noisy_status = latencies(url_b, token_b, samples)
        flooder.join()
        statuses, elapsed = result["a"]
        print(
            f"   {label:<21}: A sent {len(statuses) / elapsed:.0f}/s "
            f"({len(statuses) / elapsed / 2:.0f}x quota), {statuses.count(429) / len(statuses):.1%}"
            f" refused; B p50 / p95 {ms(statistics.median(noisy))} / {ms(pct(noisy, 0.95))}"
            f", B 429s: {noisy_status.count(429)} of {samples}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--big", action="store_true", help="longer floods, more decisions")
    parser.add_argument("--rounds", type=int, default=0, help="rounds of section 4")
    args = parser.parse_args()
    decisions, seconds, samples, rounds = (
        (20_000, 10.0, 300, 3) if args.big else (2_000, 3.0, 60, 2)
    )
    rounds = args.rounds or rounds
    base_url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/fhirplatform")
    scratch = "fp_limits_bench_" + uuid.uuid4().hex[:6]
    admin_execute(base_url, f'CREATE DATABASE "{scratch}"')
    print(f"   {socket.gethostname()}: {os.cpu_count()} CPUs")
    load_average("start")
    try:
        with private_redis() as (limits_redis_url, redis_pid):
            database_url = scratch_url(base_url, scratch)
            setup_django(database_url, limits_redis_url)
            from fhirplatform.limits.models import LimitOverride
            from fhirplatform.limits.services import limit_override_save
            from tenants.models import Tenant
            from tenants.services import tenant_create

            tenant_create(slug="bench-a", name="Bench A", plan_name="enterprise")
            tenant_create(slug="bench-b", name="Bench B", plan_name="enterprise")
            # Tenant A's own bucket never refuses: its clients' buckets are what is measured.
            bench_a = Tenant.objects.get(slug="bench-a")
            limit_override_save(override=LimitOverride(tenant=bench_a, per_minute=10**9))
            bench_decisions(decisions)
            bench_refusal_cost(decisions)
            load_average("after 1")
            workers, server_threads = 3, 4
            server_env = dict(
                os.environ,
                DATABASE_URL=database_url,
                LIMITS_REDIS_URL=limits_redis_url,
                LOG_LEVEL="WARNING",
                LIMITS_EVENTS_BACKGROUND_FLUSH="true",
            )
            # Every 429 is a logged warning: kept out of the printed results.
            server_log = Path(tempfile.gettempdir()) / f"{scratch}-gunicorn.log"
            print(f"   server log: {server_log}")
            with gunicorn_server(
                env=server_env, workers=workers, threads=server_threads, log=server_log
            ) as server:
                base = server.url
                warm_up(base, workers * server_threads)
                bench_accuracy(base, seconds, 16, workers, server_threads)
                load_average("after 2")
                bench_noisy(base, seconds, 4, samples)
                load_average("after 3")
                bench_unpaced(
                    server,
                    *(seconds, samples, rounds, limits_redis_url, redis_pid),
                    label="4a. Unpaced flood, the flooder's connections read late (as configured)",
                )
                load_average("after 4a")
            # The same with every refusal answered at once: what answering one costs.
            with gunicorn_server(
                env=server_env | {"LIMITS_FLOOD_DELAY_MS": "0"},
                workers=workers,
                threads=server_threads,
                log=server_log,
            ) as at_once:
                warm_up(at_once.url, workers * server_threads)
                bench_unpaced(
                    at_once,
                    *(seconds, samples, rounds, limits_redis_url, redis_pid),
                    label="4b. Unpaced flood, refusals answered at once (LIMITS_FLOOD_DELAY_MS=0)",
                )
                load_average("after 4b")
    finally:
        from django.db import connections

        connections.close_all()
        admin_execute(base_url, f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')


if __name__ == "__main__":
    main()
