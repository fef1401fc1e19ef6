"""Probes: /healthz says the process is up; /readyz checks PostgreSQL, Redis and migrations."""

import time
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from fhirplatform.redis_clients import redis_client
from fhirplatform.schemas import schema_public
from tenants.models import Tenant


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def _check(fn: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        detail = fn()
        result: dict[str, Any] = {"ok": True}
        if detail:
            result.update(detail)
    except Exception as exc:  # a probe reports every failure rather than raising
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    result["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


def _postgres() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _redis() -> None:
    redis_client(settings.REDIS_URL, timeout_seconds=1).ping()


def _migrations() -> dict[str, Any]:
    """Public schema has no unapplied migration; each tenant schema has every tenant-app one."""
    schema_public()
    executor = MigrationExecutor(connection)
    pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
    if pending:
        raise RuntimeError(f"{len(pending)} public migration(s) pending")
    tenant_labels = {
        config.label for config in apps.get_app_configs() if config.name in settings.TENANT_APPS
    }
    expected = {key for key in executor.loader.graph.nodes if key[0] in tenant_labels}
    schemas = list(Tenant.objects.values_list("schema_name", flat=True))
    if not schemas:
        return {"tenants": 0}
    union = " UNION ALL ".join(
        f'SELECT %s AS schema, app, name FROM "{schema}".django_migrations' for schema in schemas
    )
    with connection.cursor() as cursor:
        cursor.execute(union, schemas)
        applied: dict[str, set[tuple[str, str]]] = {schema: set() for schema in schemas}
        for schema, app, name in cursor.fetchall():
            applied[schema].add((app, name))
    behind = sorted(schema for schema, done in applied.items() if not expected <= done)
    if behind:
        raise RuntimeError(f"tenant schemas behind on migrations: {', '.join(behind[:10])}")
    return {"tenants": len(schemas)}


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    checks = {"postgres": _check(_postgres), "redis": _check(_redis)}
    checks["migrations"] = (
        _check(_migrations) if checks["postgres"]["ok"] else {"ok": False, "error": "postgres down"}
    )
    ready = all(check["ok"] for check in checks.values())
    return JsonResponse(
        {"status": "ready" if ready else "not-ready", "checks": checks},
        status=200 if ready else 503,
    )
