#!/usr/bin/env python
"""Revocation benchmark: how soon a cached token is refused after its revocation commits.

    set -a; . .data/services.env; set +a
    .venv/bin/python scripts/bench_revocation.py [--trials 20] [--readers 6] [--rate 0]

A gunicorn (2 workers x 4 threads) serves the platform on loopback. Per trial a fresh
token is read a dozen times on new connections, so both workers cache it, then reader
threads call `GET Patient/<id>` (back to back, or together at --rate reads a second)
while the benchmark commits one revocation
through the services (a token revoked, a client revoked, a grant's scopes narrowed to
another type, a tenant suspended: the kinds take turns). The readers run in a process of
their own, so that the revoking thread does not wait for the interpreter lock behind them
(time.perf_counter is the system's monotonic clock in both). Printed per kind and overall
(p50/p99 over the trials):

- revocation → first denial: from just before the service call to the end of the first
  response refused with 401/403;
- the service call (its transaction, commit, generation bump and log line), and published
  → denial: from the generation bump, which tells every process to read its cached tokens
  again (the commit hook of tenants/token_cache.py, timed here), to that response;
- served after revocation: requests *sent after the service call returned* that were
  still answered (the 404 of the unknown patient the readers ask for): a cached token
  served after its revocation would show here (must be 0).
"""

import argparse
import multiprocessing
import os
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path

import django
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fhirplatform.settings")
django.setup()

from scripts.loopback import gunicorn  # noqa: E402
from tenants import token_cache  # noqa: E402
from tenants.models import AccessToken, Grant, Tenant, TenantStatus  # noqa: E402
from tenants.scopes import scopes_parse  # noqa: E402
from tenants.services import (  # noqa: E402
    client_create,
    client_revoke,
    credential_hash,
    grant_update,
    rate_plan_count_only,
    tenant_create,
    tenant_set_status,
    token_issue,
    token_revoke,
)

PLAN = "bench-unthrottled"
KINDS = ("token", "client", "grant scopes", "tenant")


def _grant(tenant: Tenant) -> Grant:
    return client_create(
        partner_name="Revocation benchmark",
        tenant_slugs=[tenant.slug],
        scopes="system/*.rs",
        plan_name=PLAN,
        name=f"revocation {uuid.uuid4().hex[:8]}",
    ).grants[0]


def _revocation(kind: str, grant: Grant, token: str) -> Callable[[], object]:
    """The service call revoking `kind`, with what it is given (an operator's admin page
    has the token row in hand) looked up beforehand, outside the timing."""
    if kind == "token":
        row = AccessToken.objects.get(token_hash=credential_hash(token))
        return lambda: token_revoke(token=row)
    if kind == "client":
        client = grant.client
        return lambda: client_revoke(client=client)
    if kind == "grant scopes":
        return lambda: grant_update(grant=grant, scopes="system/Observation.rs")
    tenant = grant.tenant
    return lambda: tenant_set_status(tenant=tenant, status=TenantStatus.SUSPENDED)


def _warm(url: str, headers: dict[str, str]) -> None:
    """Read on a new connection each time, so that every worker caches the token."""
    for _ in range(12):
        response = requests.get(url, headers=headers, timeout=5)
        assert response.status_code in (200, 404), response.text


Outcome = tuple[float, float, int] | None  # (sent, answered, status); None: readers done


@dataclass(frozen=True)
class Readers:
    threads: int
    rate: float  # reads a second, all threads together; 0: back to back


def _read_until(
    url: str,
    headers: dict[str, str],
    readers: Readers,
    stop: Event,
    out: "Queue[Outcome]",
) -> None:
    """The readers' process: `readers.threads` threads reading until `stop`, back to back
    or together at `readers.rate` reads a second."""
    gap = readers.threads / readers.rate if readers.rate else 0.0

    def reader(offset: float) -> None:
        session = requests.Session()
        session.headers.update(headers)
        due = time.perf_counter() + offset
        while not stop.is_set():
            if gap:
                time.sleep(max(0.0, due - time.perf_counter()))
                due += gap
            sent = time.perf_counter()
            status = session.get(url, timeout=10).status_code
            out.put((sent, time.perf_counter(), status))

    threads = [
        threading.Thread(target=reader, args=(gap * n / readers.threads,))
        for n in range(readers.threads)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.put(None)


@dataclass(frozen=True)
class Trial:
    first_denial_ms: float | None  # from just before the service call
    call_ms: float  # the service call
    published_ms: float  # from just before the service call to the generation bump
    served_late: int


_published: list[float] = []
_generation_bump_untimed = token_cache._generation_bump


def _timed_generation_bump() -> None:
    """The token cache's commit hook (tenants/token_cache.py), timed: the moment every
    process is told that cached tokens must be read again."""
    _generation_bump_untimed()
    _published.append(time.perf_counter())


def _trial(base: str, kind: str, tenant: Tenant, readers: Readers) -> Trial:
    if kind == "tenant":
        tenant = tenant_create(
            slug=f"rev-{uuid.uuid4().hex[:8]}", name="Revocation benchmark", plan_name=PLAN
        )
    grant = _grant(tenant)
    token = token_issue(
        grant=grant, scopes=scopes_parse("system/*.rs"), auth_method="benchmark"
    ).access_token
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}
    url = f"{base}/fhir/{tenant.slug}/Patient/unknown-patient"
    _warm(url, headers)

    # Forked: the readers use no database connection, only HTTP.
    context = multiprocessing.get_context("fork")
    stop, out = context.Event(), context.Queue()
    process = context.Process(target=_read_until, args=(url, headers, readers, stop, out))
    process.start()
    revoke = _revocation(kind, grant, token)
    time.sleep(0.3)
    _published.clear()
    began = time.perf_counter()
    revoke()
    returned = time.perf_counter()
    published = _published[0]
    time.sleep(0.3)
    stop.set()
    outcomes: list[tuple[float, float, int]] = []
    while (outcome := out.get(timeout=30)) is not None:
        outcomes.append(outcome)
    process.join()
    denials = [answered for sent, answered, status in outcomes if status in (401, 403)]
    served_late = sum(1 for sent, _, status in outcomes if sent > returned and status == 404)
    others = Counter(status for _, _, status in outcomes if status not in (401, 403, 404))
    if others:
        print(f"  {kind}: other answers during the trial: {dict(others)}", flush=True)
    first = (min(denials) - began) * 1000 if denials else None
    return Trial(first, (returned - began) * 1000, (published - began) * 1000, served_late)


def _percentiles(values: list[float]) -> str:
    values = sorted(values)
    p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
    return f"p50 {statistics.median(values):6.1f} ms  p99 {p99:6.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="per kind of revocation")
    parser.add_argument("--readers", type=int, default=6)
    parser.add_argument(
        "--rate", type=float, default=0, help="reads a second, all readers together (0: unpaced)"
    )
    args = parser.parse_args()
    # callers_changed() looks the hook up when it registers it on commit.
    token_cache._generation_bump = _timed_generation_bump
    rate_plan_count_only(name=PLAN, description="Benchmarks: count, never refuse")
    tenant = Tenant.objects.filter(slug="bench-revocation").first() or tenant_create(
        slug="bench-revocation", name="Revocation benchmark", plan_name=PLAN
    )
    # The readers' refused requests would use up their address's refusal budget (429).
    env = dict(os.environ, LOG_LEVEL="WARNING", LIMITS_REFUSALS_PER_IP="1000000/m")
    load_before = os.getloadavg()
    trials: dict[str, list[Trial]] = {kind: [] for kind in KINDS}
    with gunicorn(env=env, workers=2, threads=4) as base:
        for number in range(args.trials):
            for kind in KINDS:
                trial = _trial(base, kind, tenant, Readers(args.readers, args.rate))
                if trial.first_denial_ms is None:
                    print(f"trial {number} {kind}: no denial seen", flush=True)
                trials[kind].append(trial)
    pace = f"{args.rate:g} reads/s in all" if args.rate else "back to back"
    print(f"\n{args.trials} trials per kind, {args.readers} reader threads ({pace}), gunicorn 2x4")
    every = [trial for kind_trials in trials.values() for trial in kind_trials]
    for kind, kind_trials in [*trials.items(), ("all", every)]:
        seen = [t for t in kind_trials if t.first_denial_ms is not None]
        if seen:
            print(
                f"{kind:<14} revocation -> first denial: "
                f"{_percentiles([t.first_denial_ms for t in seen])}  (n={len(seen)})"  # type: ignore[misc]
                f"\n{'':<14}   the service call       : "
                f"{_percentiles([t.call_ms for t in seen])}"
                f"\n{'':<14}   published -> denial    : "
                f"{_percentiles([t.first_denial_ms - t.published_ms for t in seen])}"  # type: ignore[operator]
            )
    late = sum(t.served_late for t in every)
    print(f"requests sent after the revocation returned and still served: {late}")
    print(
        "load average (1/5/15 min) before "
        + " / ".join(f"{v:.2f}" for v in load_before)
        + ", after "
        + " / ".join(f"{v:.2f}" for v in os.getloadavg())
    )


if __name__ == "__main__":
    main()
