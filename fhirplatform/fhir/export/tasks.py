"""Bulk export's Celery tasks (queue `export`): thin, by ids, safe to run twice."""

import logging

import redis
from django.utils import timezone
from kombu.exceptions import KombuError

from fhirplatform.celery import app, tenant_task
from fhirplatform.fhir.export.runner import export_run as run_job
from fhirplatform.fhir.export.runner import jobs_unattended
from fhirplatform.fhir.export.services import export_expire
from fhirplatform.schemas import schema_public, tenant_schema
from tenants.selectors import tenants_with_schema

logger = logging.getLogger(__name__)


@tenant_task(name="export.run", atomic=False, ignore_result=True)
def export_run(*, tenant_schema: str, job_id: str) -> str:
    """Run or resume one export job of the task's tenant (runner.py)."""
    return run_job(job_id=job_id)


def export_send(*, tenant_schema: str, job_id: str) -> bool:
    """Send a job to the export workers; whether the broker took it. Never raises: with
    the broker down the job stays queued in the database, and export.reap_all sends it
    again (a kick-off is not refused for what only delays it)."""
    try:
        # No publish retries: a kick-off's answer waits on this.
        export_run.apply_async(
            kwargs={"tenant_schema": tenant_schema, "job_id": job_id}, retry=False
        )
    except (KombuError, OSError, redis.RedisError):
        logger.warning(
            "export: job not sent to the workers; the reaper sends it again",
            extra={"tenant_schema": tenant_schema, "job": job_id},
            exc_info=True,
        )
        return False
    return True


@app.task(name="export.reap_all", ignore_result=True)
def export_reap_all() -> dict[str, int]:
    """Send again every job no worker is on (runner.py jobs_unattended): a running one
    whose worker died resumes after its last recorded file (or fails past
    EXPORT_MAX_ATTEMPTS); a queued one whose message was lost starts."""
    sent: dict[str, int] = {}
    for tenant in tenants_with_schema():
        with tenant_schema(tenant):
            unattended = jobs_unattended()
        for job_id in unattended:
            export_send(tenant_schema=tenant.schema_name, job_id=job_id)
        if unattended:
            sent[tenant.slug] = len(unattended)
    schema_public()
    return sent


@app.task(name="export.expire_all", ignore_result=True)
def export_expire_all() -> dict[str, int]:
    """Delete every tenant's expired exports and their files."""
    now = timezone.now()
    expired: dict[str, int] = {}
    for tenant in tenants_with_schema():
        with tenant_schema(tenant):
            expired[tenant.slug] = export_expire(now=now)
    schema_public()
    return expired
