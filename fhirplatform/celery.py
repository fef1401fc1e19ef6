"""The Celery app, and the rules its tasks follow.

Every message carries a signed context envelope (fhirplatform/task_envelope.py): a
worker runs only messages the platform sealed, so one injected into the broker cannot
pick a tenant. A tenant task is declared with `@tenant_task` and enqueued with
`task.delay(tenant_schema=..., ...)` (normally from `transaction.on_commit`).
Without a known, active tenant schema the task fails closed: it never falls back
to the public schema or to whatever schema the worker's connection last held.
"""

import os
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.schedules import crontab

from fhirplatform.context import context_update
from fhirplatform.schemas import tenant_schema
from fhirplatform.task_envelope import Envelope, EnvelopeRefused, SignedTask, TenantMissing

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fhirplatform.settings")

__all__ = [
    "EXPORT_QUEUE",
    "PLATFORM_QUEUE",
    "QUEUES",
    "EnvelopeRefused",
    "TenantMissing",
    "TenantTask",
    "app",
    "tenant_task",
]

# The platform's own tasks (cache invalidation, audit sealing, token purges), and bulk
# exports, which run on workers of their own (scripts/run.py) so that a long export never
# holds up the others.
PLATFORM_QUEUE = "fhirplatform"
EXPORT_QUEUE = "export"
QUEUES = (PLATFORM_QUEUE, EXPORT_QUEUE)

app = Celery("fhirplatform", task_cls=SignedTask)
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_queue=PLATFORM_QUEUE,
    broker_connection_retry_on_startup=True,
    result_expires=3600,
    task_routes={"export.*": {"queue": EXPORT_QUEUE}},
    beat_schedule={
        "purge-expired-tokens": {
            "task": "tenants.tasks.tokens_purge_expired",
            "schedule": crontab(minute="*/15"),
        },
        # Events wait this long at most to be sealed (docs/audit.md).
        "audit-seal": {
            "task": "audit.seal_all",
            "schedule": float(os.environ.get("AUDIT_SEAL_SECONDS", "10")),
        },
        # Exports whose worker died are resumed; expired exports' files are deleted.
        "export-reap": {"task": "export.reap_all", "schedule": 30.0},
        "export-expire": {"task": "export.expire_all", "schedule": crontab(minute="*/10")},
        # Sealed blocks older than their trail's retention leave it as archives.
        "audit-archive": {
            "task": "audit.archive_all",
            "schedule": crontab(hour=3, minute=17),
        },
    },
)
app.autodiscover_tasks(["tenants", "fhirplatform.fhir", "fhirplatform.fhir.export", "audit"])


class TenantTask(SignedTask):
    abstract = True
    # False: the task commits step by step in the schema (a bulk export writes for minutes
    # and records each file as it goes), rather than as one transaction.
    atomic = True

    def run_verified(self, envelope: Envelope | None, args: Any, kwargs: Any) -> Any:
        """Run in the schema the (verified) message names, never without one."""
        from tenants.models import Tenant

        schema = kwargs.get("tenant_schema")
        if not schema:
            raise TenantMissing(f"{self.name} needs tenant_schema=")
        tenant = Tenant.objects.filter(schema_name=schema).first()
        if tenant is None:
            raise TenantMissing(f"{self.name}: no tenant with schema {schema!r}")
        if envelope is not None:
            context_update(tenant=tenant.slug, client=envelope.client)
        # One transaction in the schema: the search_path is set inside it (SET LOCAL).
        with tenant_schema(tenant, atomic=self.atomic):
            return super().run_verified(envelope, args, kwargs)


def tenant_task(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """Declare a task that runs inside the schema named by its `tenant_schema` argument."""
    return app.task(base=TenantTask, **options)  # type: ignore[no-any-return]
