"""The Celery app, and the rule that every tenant task runs in its tenant's schema.

A tenant task is declared with `@tenant_task` and enqueued with
`task.delay(tenant_schema=..., ...)` (normally from `transaction.on_commit`).
Without a known, active tenant schema the task fails closed: it never falls back
to the public schema or to whatever schema the worker's connection last held.
"""

import os
from collections.abc import Callable
from typing import Any

from celery import Celery, Task
from celery.schedules import crontab

from fhirplatform.schemas import schema_activate, schema_public

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fhirplatform.settings")

app = Celery("fhirplatform")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_queue="fhirplatform",
    broker_connection_retry_on_startup=True,
    result_expires=3600,
    beat_schedule={
        "purge-expired-tokens": {
            "task": "tenants.tasks.tokens_purge_expired",
            "schedule": crontab(minute="*/15"),
        },
    },
)
app.autodiscover_tasks(["tenants", "fhirplatform.fhir"])


class TenantMissing(RuntimeError):
    """A tenant task was called without a tenant schema, or with an unknown one."""


class TenantTask(Task):  # type: ignore[misc]
    abstract = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from tenants.models import Tenant

        schema = kwargs.get("tenant_schema")
        if not schema:
            raise TenantMissing(f"{self.name} needs tenant_schema=")
        tenant = Tenant.objects.filter(schema_name=schema).first()
        if tenant is None:
            raise TenantMissing(f"{self.name}: no tenant with schema {schema!r}")
        schema_activate(tenant)
        try:
            return super().__call__(*args, **kwargs)
        finally:
            schema_public()


def tenant_task(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """Declare a task that runs inside the schema named by its `tenant_schema` argument."""
    return app.task(base=TenantTask, **options)  # type: ignore[no-any-return]
