"""Probes: /healthz says the process is up; /readyz checks PostgreSQL, Redis, migrations
and the Celery workers.

PostgreSQL, Redis and migrations are required: without one, /readyz is 503 not-ready.
Workers are not: requests are served without them (invalidation stays correct, exports
queue), so no answering worker is 200 "degraded" with the workers check false.
"""

import threading
import time
from collections.abc import Callable
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from fhirplatform.celery import QUEUES
from fhirplatform.celery import app as celery_app
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


def _workers() -> dict[str, Any]:
    """Every queue has a Celery worker consuming it, by the workers' own answer over the
    broker: the platform's tasks and the bulk exports run on workers of their own, and
    either kind may be down while the other answers."""
    with celery_app.connection_for_write(connect_timeout=1) as connection:
        # One quick connection attempt: kombu's own retries would hold the probe for seconds.
        connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=1)
        inspect = celery_app.control.inspect(timeout=WORKERS_WAIT_SECONDS, connection=connection)
        replies = inspect.active_queues() or {}
    consumed = {queue["name"] for queues in replies.values() for queue in queues or ()}
    if missing := [queue for queue in QUEUES if queue not in consumed]:
        raise RuntimeError(f"no Celery worker consumes {', '.join(missing)}")
    return {"workers": sorted(replies), "queues": sorted(consumed)}


class CachedCheck:
    """A probe check answered from memory for a few seconds: a ping waits up to a second,
    and /readyz is called often (by every load balancer, every few seconds)."""

    def __init__(self, check: Callable[[], dict[str, Any] | None], seconds: float) -> None:
        self.check = check
        self.seconds = seconds
        self._lock = threading.Lock()
        self._result: dict[str, Any] | None = None
        self._at = 0.0

    def __call__(self) -> dict[str, Any]:
        with self._lock:
            if self._result is None or time.monotonic() - self._at > self.seconds:
                self._result = _check(self.check)
                self._at = time.monotonic()
            return dict(self._result)

    def forget(self) -> None:
        with self._lock:
            self._result = None


# How long the workers check waits for their answers (every worker answers; none is the
# last): the probe answers from memory for WORKERS seconds after that.
WORKERS_WAIT_SECONDS = 0.5
WORKERS = CachedCheck(_workers, seconds=5)


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    checks = {"postgres": _check(_postgres), "redis": _check(_redis)}
    checks["migrations"] = (
        _check(_migrations) if checks["postgres"]["ok"] else {"ok": False, "error": "postgres down"}
    )
    required = all(check["ok"] for check in checks.values())
    checks["workers"] = WORKERS()
    if not required:
        return JsonResponse({"status": "not-ready", "checks": checks}, status=503)
    status = "ready" if checks["workers"]["ok"] else "degraded"
    return JsonResponse({"status": status, "checks": checks})
