"""Rate-limit benchmark: what a decision costs, how exact the bound is, noisy neighbours.

Runs in a scratch database (created and dropped here) on the PostgreSQL of DATABASE_URL,
with the limiter on REDIS_URL:

    set -a; . .data/services.env; set +a
    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/fp_limits \\
    REDIS_URL=redis://127.0.0.1:6379/5 .venv/bin/python scripts/bench_limits.py [--big]

Prints:
  1. limiter decision cost in-process (p50/p99 of limit_admit, and of release) next to a
     Redis PING in the same run; Redis round trips per decision counted by Redis itself
     (INFO commandstats);
  2. admitted vs bound (burst + rate x elapsed) for one client flooding a gunicorn with
     several workers and threads;
  3. noisy neighbour: tenant B's p50/p95 and 429 count, alone and while tenant A floods
     at 10x and more of its quota.
Default runs take seconds; --big runs longer floods and more decisions.
"""

import argparse
import os
import statistics
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import psycopg
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.loopback import gunicorn  # noqa: E402


def scratch_url(base_url: str, name: str) -> str:
    return urlunparse(urlparse(base_url)._replace(path="/" + name))


def admin_execute(base_url: str, sql: str) -> None:
    with psycopg.connect(scratch_url(base_url, "postgres"), autocommit=True) as conn:
        conn.execute(sql)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(value: float) -> str:
    return f"{value * 1000:.3f} ms"


def setup_django(database_url: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fhirplatform.settings")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate_schemas", shared=True, verbosity=0, interactive=False)


PLAN_DEFAULTS = dict(
    read_per_minute=600,
    search_per_minute=200,
    write_per_minute=6000,
    history_per_minute=60,
    batch_per_minute=30,
    export_per_hour=6,
    export_poll_per_minute=60,
    concurrency=1000,
    daily_quota=10_000_000,
)


def plan_named(name: str, **limits: int) -> str:
    """The benchmark plan `name`, created the first time through the one plan builder."""
    from tenants.services import ProvisioningError, rate_plan_create, rate_plan_get

    try:
        rate_plan_get(name=name)
    except ProvisioningError:
        rate_plan_create(name=name, description="Rate-limit benchmark", **(PLAN_DEFAULTS | limits))
    return name


def make_client(tenant_slug: str, plan_name: str, **plan: int):
    from tenants.scopes import scopes_parse
    from tenants.services import client_create, token_issue

    issued = client_create(
        partner_name="Bench " + uuid.uuid4().hex[:6],
        tenant_slugs=[tenant_slug],
        scopes="system/*.cruds",
        plan_name=plan_named(plan_name, **plan),
    )
    grant = issued.grants[0]
    token = token_issue(grant=grant, scopes=scopes_parse("system/*.cruds"), auth_method="bench")
    return grant, token.access_token


def bench_decisions(decisions: int) -> None:
    from fhirplatform.limits.codes import EndpointClass
    from fhirplatform.limits.engine import limit_admit
    from fhirplatform.limits.models import LimitOverride
    from fhirplatform.limits.services import limit_override_save
    from fhirplatform.limits.store import limiter_redis
    from tenants.models import Grant, Tenant
    from tenants.tokens import Caller

    # Only the client's and the tenant's buckets are measured here, never refused.
    bench_a = Tenant.objects.get(slug="bench-a")
    limit_override_save(override=LimitOverride(tenant=bench_a, per_minute=10**9))
    grant, _ = make_client("bench-a", "bench-generous", read_per_minute=10**9)
    grant = Grant.objects.select_related("client", "tenant__plan", "plan").get(pk=grant.pk)
    caller = Caller(
        tenant=grant.tenant, client=grant.client, grant=grant, scopes=[], token_id=uuid.uuid4().hex
    )
    client = limiter_redis()  # the limiter's own connection pool: PING and EVALSHA alike

    def stats() -> tuple[int, int]:
        info = client.info("commandstats")
        calls = sum(v["calls"] for k, v in info.items() if k.startswith("cmdstat_"))
        return info.get("cmdstat_evalsha", {}).get("calls", 0), calls

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
    evalsha_before, calls_before = stats()
    for _ in range(decisions):
        started = time.perf_counter()
        admission = limit_admit(
            caller=caller, endpoint_class=EndpointClass.READ, resource_type="Patient"
        )
        middle = time.perf_counter()
        admission.release()
        releases.append(time.perf_counter() - middle)
        admits.append(middle - started)
    evalsha_after, calls_after = stats()
    evalsha_before_admits = evalsha_after  # decisions only, no releases
    held = [
        limit_admit(caller=caller, endpoint_class=EndpointClass.READ, resource_type="Patient")
        for _ in range(50)
    ]
    evalsha_admits_only = (stats()[0] - evalsha_before_admits) / 50
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
        f"   Redis calls per admit+release : {(calls_after - calls_before) / decisions:.2f}"
        f" counting commands inside scripts; EVALSHA round trips"
        f" {(evalsha_after - evalsha_before) / decisions:.2f}"
    )


def create_patient(base: str, tenant: str, token: str) -> str:
    response = requests.post(
        f"{base}/fhir/{tenant}/Patient",
        json={"resourceType": "Patient", "name": [{"family": "Bench"}]},
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"},
        timeout=10,
    )
    response.raise_for_status()
    return str(response.json()["id"])


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


def latencies(url: str, token: str, count: int) -> tuple[list[float], list[int]]:
    values, statuses = [], []
    with requests.Session() as session:
        for _ in range(count):
            started = time.perf_counter()
            statuses.append(
                session.get(
                    url, headers={"Authorization": f"Bearer {token}"}, timeout=10
                ).status_code
            )
            values.append(time.perf_counter() - started)
            time.sleep(0.01)
    return values, statuses


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
    args = parser.parse_args()
    decisions, seconds, samples = (20_000, 10.0, 300) if args.big else (2_000, 3.0, 60)
    base_url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/fhirplatform")
    scratch = "fp_limits_bench_" + uuid.uuid4().hex[:6]
    admin_execute(base_url, f'CREATE DATABASE "{scratch}"')
    try:
        database_url = scratch_url(base_url, scratch)
        setup_django(database_url)
        from tenants.services import tenant_create

        tenant_create(slug="bench-a", name="Bench A", plan_name="enterprise")
        tenant_create(slug="bench-b", name="Bench B", plan_name="enterprise")
        bench_decisions(decisions)
        workers, server_threads = 3, 4
        server_env = dict(
            os.environ,
            DATABASE_URL=database_url,
            LOG_LEVEL="WARNING",
            LIMITS_EVENTS_BACKGROUND_FLUSH="true",
        )
        with gunicorn(env=server_env, workers=workers, threads=server_threads) as base:
            bench_accuracy(base, seconds, 16, workers, server_threads)
            bench_noisy(base, seconds, 4, samples)
    finally:
        from django.db import connections

        connections.close_all()
        admin_execute(base_url, f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')


if __name__ == "__main__":
    main()
