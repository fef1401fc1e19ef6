"""Bulk export's Celery tasks (queue `export`): thin, by ids, safe to run twice."""

from django.utils import timezone

from fhirplatform.celery import app, tenant_task
from fhirplatform.fhir.export.runner import export_run as run_job
from fhirplatform.fhir.export.runner import jobs_orphaned
from fhirplatform.fhir.export.services import export_expire
from fhirplatform.schemas import schema_public, tenant_schema
from tenants.selectors import tenants_with_schema


@tenant_task(name="export.run", atomic=False, ignore_result=True)
def export_run(*, tenant_schema: str, job_id: str) -> str:
    """Run or resume one export job of the task's tenant (runner.py)."""
    return run_job(job_id=job_id)


@app.task(name="export.reap_all", ignore_result=True)
def export_reap_all() -> dict[str, int]:
    """Queue again every running job whose worker stopped renewing its heartbeat: the next
    run resumes it after its last recorded file, or fails it past EXPORT_MAX_ATTEMPTS."""
    queued: dict[str, int] = {}
    for tenant in tenants_with_schema():
        with tenant_schema(tenant):
            orphaned = jobs_orphaned()
        for job_id in orphaned:
            export_run.delay(tenant_schema=tenant.schema_name, job_id=job_id)
        if orphaned:
            queued[tenant.slug] = len(orphaned)
    schema_public()
    return queued


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
