#!/usr/bin/env python
"""Revocation benchmark: how soon a cached token is refused after its revocation commits.

    set -a; . .data/services.env; set +a
    .venv/bin/python scripts/bench_revocation.py [--trials 20] [--readers 6]

A gunicorn (2 workers x 4 threads) serves the platform on loopback. Per trial a fresh
token is read a dozen times on new connections, so both workers cache it, then reader
threads call `GET Patient/<id>` back to back while the benchmark commits one revocation
through the services (a token revoked, a client revoked, a grant's scopes narrowed to
another type, a tenant suspended: the kinds take turns). Printed per kind and overall:

- revocation → first denial: from just before the service call to the end of the first
  response refused with 401/403 (p50/p99 over the trials);
- served after revocation: requests *sent after the service call returned* that were
  still answered (the 404 of the unknown patient the readers ask for): a cached token
  served after its revocation would show here (must be 0).
"""

import argparse
import os
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import django
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fhirplatform.settings")
django.setup()

from scripts.loopback import gunicorn  # noqa: E402
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


def _revoke(kind: str, grant: Grant, token: str) -> None:
    if kind == "token":
        token_revoke(token=AccessToken.objects.get(token_hash=credential_hash(token)))
    elif kind == "client":
        client_revoke(client=grant.client)
    elif kind == "grant scopes":
        grant_update(grant=grant, scopes="system/Observation.rs")
    else:
        tenant_set_status(tenant=grant.tenant, status=TenantStatus.SUSPENDED)


def _warm(url: str, headers: dict[str, str]) -> None:
    """Read on a new connection each time, so that every worker caches the token."""
    for _ in range(12):
        response = requests.get(url, headers=headers, timeout=5)
        assert response.status_code in (200, 404), response.text


def _trial(base: str, kind: str, tenant: Tenant, readers: int) -> tuple[float | None, int]:
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

    outcomes: list[tuple[float, float, int]] = []  # (sent, answered, status)
    lock = threading.Lock()
    stop = threading.Event()

    def reader() -> None:
        session = requests.Session()
        session.headers.update(headers)
        mine = []
        while not stop.is_set():
            sent = time.perf_counter()
            status = session.get(url, timeout=10).status_code
            mine.append((sent, time.perf_counter(), status))
        with lock:
            outcomes.extend(mine)

    threads = [threading.Thread(target=reader) for _ in range(readers)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    began = time.perf_counter()
    _revoke(kind, grant, token)
    returned = time.perf_counter()
    time.sleep(0.3)
    stop.set()
    for thread in threads:
        thread.join()
    denials = [answered for sent, answered, status in outcomes if status in (401, 403)]
    served_late = sum(1 for sent, _, status in outcomes if sent > returned and status == 404)
    others = Counter(status for _, _, status in outcomes if status not in (401, 403, 404))
    if others:
        print(f"  {kind}: other answers during the trial: {dict(others)}", flush=True)
    first = (min(denials) - began) * 1000 if denials else None
    return first, served_late


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="per kind of revocation")
    parser.add_argument("--readers", type=int, default=6)
    args = parser.parse_args()
    rate_plan_count_only(name=PLAN, description="Benchmarks: count, never refuse")
    tenant = Tenant.objects.filter(slug="bench-revocation").first() or tenant_create(
        slug="bench-revocation", name="Revocation benchmark", plan_name=PLAN
    )
    # The readers' refused requests would use up their address's refusal budget (429).
    env = dict(os.environ, LOG_LEVEL="WARNING", LIMITS_REFUSALS_PER_IP="1000000/m")
    load_before = os.getloadavg()
    firsts: dict[str, list[float]] = {kind: [] for kind in KINDS}
    late = 0
    with gunicorn(env=env, workers=2, threads=4) as base:
        for number in range(args.trials):
            for kind in KINDS:
                first, served_late = _trial(base, kind, tenant, args.readers)
                late += served_late
                if first is None:
                    print(f"trial {number} {kind}: no denial seen", flush=True)
                else:
                    firsts[kind].append(first)
    print(f"\n{args.trials} trials per kind, {args.readers} reader threads, gunicorn 2x4")
    every = [value for values in firsts.values() for value in values]
    for kind, values in [*firsts.items(), ("all", every)]:
        if values:
            values.sort()
            p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
            print(
                f"{kind:<14} revocation -> first denial: p50 {statistics.median(values):6.1f} ms"
                f"  p99 {p99:6.1f} ms  max {values[-1]:6.1f} ms  (n={len(values)})"
            )
    print(f"requests sent after the revocation returned and still served: {late}")
    print(
        "load average (1/5/15 min) before "
        + " / ".join(f"{v:.2f}" for v in load_before)
        + ", after "
        + " / ".join(f"{v:.2f}" for v in os.getloadavg())
    )


if __name__ == "__main__":
    main()
