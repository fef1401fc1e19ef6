"""Provisioning benchmark: time to create a tenant, and how migrate_schemas scales.

Runs in a scratch database (dropped at the end) on the PostgreSQL the platform uses:

    set -a; . .data/services.env; set +a
    .venv/bin/python scripts/bench_provisioning.py [--tenants 100]

Prints: per-tenant create_tenant time (p50 / p95 / mean), a no-op migrate_schemas over
all tenants, and migrate_schemas re-applying every tenant-app migration on all
tenants (standard and multiprocessing executors).
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import psycopg

ROOT = Path(__file__).resolve().parent.parent
TENANT_APP_LABELS = ["fhir_search", "fhir"]


def scratch_url(base_url: str, name: str) -> str:
    return urlunparse(urlparse(base_url)._replace(path="/" + name))


def admin_execute(base_url: str, sql: str) -> None:
    with psycopg.connect(scratch_url(base_url, "postgres"), autocommit=True) as conn:
        conn.execute(sql)


def manage(env: dict[str, str], *args: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", type=int, default=100)
    options = parser.parse_args()

    base_url = os.environ["DATABASE_URL"]
    database = "fhirplatform_bench_provisioning"
    admin_execute(base_url, f'DROP DATABASE IF EXISTS "{database}"')
    admin_execute(base_url, f'CREATE DATABASE "{database}"')
    env = dict(os.environ, DATABASE_URL=scratch_url(base_url, database), LOG_LEVEL="WARNING")
    try:
        print(f"public schema migrate: {manage(env, 'migrate_schemas', '--shared'):.2f} s")
        os.environ.update(env)
        sys.path.insert(0, str(ROOT))
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fhirplatform.settings")
        import django

        django.setup()
        from tenants.services import tenant_create

        durations = []
        for index in range(options.tenants):
            started = time.perf_counter()
            tenant_create(slug=f"bench-{index:04d}", name=f"Bench {index}")
            durations.append(time.perf_counter() - started)
        ordered = sorted(durations)
        print(
            f"create_tenant x{options.tenants}: p50 {statistics.median(ordered) * 1000:.0f} ms, "
            f"p95 {ordered[int(len(ordered) * 0.95) - 1] * 1000:.0f} ms, "
            f"mean {statistics.mean(ordered) * 1000:.0f} ms, total {sum(ordered):.1f} s"
        )
        noop = manage(env, "migrate_schemas", "--executor", "standard")
        print(f"migrate_schemas, nothing to apply, {options.tenants + 1} schemas: {noop:.1f} s")
        for executor in ("standard", "multiprocessing"):
            for label in TENANT_APP_LABELS:
                manage(env, "migrate_schemas", "--tenant", label, "zero", "--executor", "standard")
            elapsed = manage(env, "migrate_schemas", "--executor", executor)
            print(
                f"migrate_schemas re-applying tenant migrations on {options.tenants} tenants "
                f"({executor}): {elapsed:.1f} s ({elapsed / options.tenants * 1000:.0f} ms/tenant)"
            )
    finally:
        from django.db import connections

        connections.close_all()
        admin_execute(base_url, f'DROP DATABASE IF EXISTS "{database}"')


if __name__ == "__main__":
    main()
