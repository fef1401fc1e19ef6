"""Section 4 of the rate-limit benchmark: tenant A floods unpaced from 8 connections while
tenant B reads, with the server's CPU per refused request and per served read.

The flood is wrk's (a Python client flooding from 8 threads would take a good part of the
machine's 2 cores itself); a Lua hook counts its statuses. The server's CPU time is that
of the gunicorn master and its workers (scripts/bench_load.py's tree_cpu_seconds), read
before and after each phase; Redis's CPU and command counts are its own private server's.
"""

import os
import re
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass

import redis
import requests

from scripts.bench_limits_support import (
    RedisCounts,
    create_patient,
    latencies,
    make_client,
    ms,
    pct,
    redis_counts,
)
from scripts.bench_load import WRK, tree_cpu_seconds
from scripts.loopback import Server

WRK_STATUS_SCRIPT = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do total[status] = (total[status] or 0) + n end
  end
  for status, n in pairs(total) do io.write(string.format("status %d %d\\n", status, n)) end
end
"""


@dataclass(frozen=True)
class WrkRun:
    statuses: dict[int, int]
    seconds: float

    @property
    def total(self) -> int:
        return sum(self.statuses.values())


def wrk(url: str, token: str, seconds: float, connections: int = 8) -> WrkRun:
    """`connections` keep-alive connections sending GETs back to back for `seconds`."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_STATUS_SCRIPT)
    try:
        started = time.monotonic()
        output = subprocess.run(
            [
                *(WRK, "-t", "2", "-c", str(connections), "-d", f"{seconds:.0f}s"),
                *("-s", script.name, "-H", f"Authorization: Bearer {token}", url),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        elapsed = time.monotonic() - started
    finally:
        os.unlink(script.name)
    statuses = {int(s): int(n) for s, n in re.findall(r"^status (\d+) (\d+)$", output, re.M)}
    return WrkRun(statuses, elapsed)


@dataclass
class Phase:
    """Totals of one kind of phase over the rounds."""

    requests: int = 0
    refused: int = 0
    seconds: float = 0.0
    server_cpu: float = 0.0
    redis_cpu: float = 0.0
    evalsha: int = 0
    sent: int = 0

    def add(self, run: WrkRun, cpu: float, redis_cpu: float, counts: RedisCounts) -> None:
        self.requests += run.total
        self.refused += run.statuses.get(429, 0)
        self.seconds += run.seconds
        self.server_cpu += cpu
        self.redis_cpu += redis_cpu
        self.evalsha += counts.evalsha
        self.sent += counts.sent


def measured_wrk(
    server: Server, url: str, token: str, seconds: float, limiter: redis.Redis, redis_pid: int
) -> tuple[WrkRun, float, float, RedisCounts]:
    """One wrk phase: its run, server CPU seconds, Redis CPU seconds, Redis command counts."""
    counts_before, redis_before = redis_counts(limiter), tree_cpu_seconds(redis_pid)
    cpu_before = tree_cpu_seconds(server.pid)
    run = wrk(url, token, seconds)
    cpu = tree_cpu_seconds(server.pid) - cpu_before
    time.sleep(0.05)  # releases still queued in an idle worker are sent
    redis_cpu = tree_cpu_seconds(redis_pid) - redis_before
    counts_after = redis_counts(limiter)
    delta = RedisCounts(
        counts_after.evalsha - counts_before.evalsha,
        counts_after.sent - counts_before.sent,
        counts_after.inside - counts_before.inside,
    )
    return run, cpu, redis_cpu, delta


def bench_unpaced(
    server: Server,
    seconds: float,
    samples: int,
    rounds: int,
    limits_redis_url: str,
    redis_pid: int,
    label: str,
) -> None:
    from fhirplatform.limits.models import LimitOverride
    from fhirplatform.limits.services import limit_override_save
    from tenants.models import Tenant

    base = server.url
    limiter = redis.Redis.from_url(limits_redis_url)
    # B's tenant-wide bucket must not refuse the served-read phase either.
    bench_b = Tenant.objects.get(slug="bench-b")
    limit_override_save(override=LimitOverride(tenant=bench_b, per_minute=10**9))
    _, token_b = make_client("bench-b", "bench-b-6000", read_per_minute=6000)
    _, token_served = make_client("bench-b", "bench-generous", read_per_minute=10**9)
    _, token_a = make_client("bench-a", "bench-120", read_per_minute=120)
    url_b = f"{base}/fhir/bench-b/Patient/{create_patient(base, 'bench-b', token_b)}"
    url_a = f"{base}/fhir/bench-a/Patient/{create_patient(base, 'bench-a', token_a)}"
    for _ in range(20):  # warm every worker's caches for the three clients
        for url, token in ((url_b, token_b), (url_b, token_served), (url_a, token_a)):
            requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)

    served, refused = Phase(), Phase()
    alone: list[float] = []
    noisy: list[float] = []
    noisy_429 = alone_429 = 0
    flood_runs: list[WrkRun] = []
    for _ in range(rounds):
        run, cpu, redis_cpu, counts = measured_wrk(
            server, url_b, token_served, seconds, limiter, redis_pid
        )
        served.add(run, cpu, redis_cpu, counts)
        run, cpu, redis_cpu, counts = measured_wrk(
            server, url_a, token_a, seconds, limiter, redis_pid
        )
        refused.add(run, cpu, redis_cpu, counts)
        quiet, quiet_status = latencies(url_b, token_b, samples)
        alone += quiet
        alone_429 += quiet_status.count(429)
        done = threading.Event()
        result: dict[str, WrkRun] = {}

        def flood_a(out: dict[str, WrkRun] = result, finished: threading.Event = done) -> None:
            out["a"] = wrk(url_a, token_a, seconds)
            finished.set()

        flooder = threading.Thread(target=flood_a)
        flooder.start()
        time.sleep(0.3)
        loud, loud_status = latencies(url_b, token_b, samples, until=done)
        flooder.join()
        noisy += loud
        noisy_429 += loud_status.count(429)
        flood_runs.append(result["a"])

    flood_total = sum(r.total for r in flood_runs)
    flood_refused = sum(r.statuses.get(429, 0) for r in flood_runs)
    flood_seconds = sum(r.seconds for r in flood_runs)
    served_cpu = served.server_cpu / max(1, served.requests - served.refused)
    refused_cpu = refused.server_cpu / max(1, refused.requests)
    print(
        f"{label}: tenant A (2/s) from 8 connections with wrk, {rounds} interleaved"
        f" rounds of {seconds:.0f} s phases"
    )
    print(
        f"   served reads (wrk, 8 conn)    : {served.requests / served.seconds:.0f}/s, "
        f"server CPU {served_cpu * 1000:.3f} ms per read, Redis CPU "
        f"{served.redis_cpu / max(1, served.requests) * 1e6:.0f} us per read"
    )
    print(
        f"   refused flood (wrk, 8 conn)   : {refused.requests / refused.seconds:.0f}/s sent, "
        f"{refused.refused / refused.seconds:.0f} refusals/s "
        f"({refused.refused / max(1, refused.requests):.1%}), server CPU "
        f"{refused_cpu * 1000:.3f} ms per request, Redis CPU "
        f"{refused.redis_cpu / max(1, refused.requests) * 1e6:.0f} us per request"
    )
    print(f"   CPU refused / served read     : {refused_cpu / served_cpu:.2f}")
    print(
        f"   Redis per served read         : {served.sent / max(1, served.requests):.2f} "
        f"commands sent (EVALSHA {served.evalsha / max(1, served.requests):.2f})"
    )
    print(
        f"   Redis per flood request       : {refused.sent / max(1, refused.requests):.3f} "
        f"commands sent (EVALSHA {refused.evalsha / max(1, refused.requests):.3f})"
    )
    print(
        f"   tenant B alone         p50 / p95 : {ms(statistics.median(alone))} / "
        f"{ms(pct(alone, 0.95))} ({len(alone)} reads, 429s: {alone_429})"
    )
    print(
        f"   B under A's flood      p50 / p95 : {ms(statistics.median(noisy))} / "
        f"{ms(pct(noisy, 0.95))} ({len(noisy)} reads, 429s: {noisy_429}); A sent "
        f"{flood_total / flood_seconds:.0f}/s, {flood_refused / flood_seconds:.0f} refusals/s"
    )
    print(
        f"   B p95 flood / alone           : {pct(noisy, 0.95) / pct(alone, 0.95):.2f} "
        f"(p50 {statistics.median(noisy) / statistics.median(alone):.2f}); goal <= 1.5"
    )
