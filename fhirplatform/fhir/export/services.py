"""Writes of bulk export jobs: kick-off, cancel, and the clean-up of expired jobs. Each
runs in the tenant's schema; the worker's own writes are in runner.py."""

from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from fhirplatform.db.locks import tenant_advisory_lock
from fhirplatform.errors import FhirError, IssueCode
from fhirplatform.fhir.export.models import ACTIVE_STATUSES, ExportJob, ExportStatus
from fhirplatform.fhir.export.params import ExportRequest
from fhirplatform.fhir.export.storage import files_delete
from fhirplatform.limits.codes import ThrottleReason
from fhirplatform.schemas import schema_current
from tenants.models import RatePlan
from tenants.scopes import scopes_text
from tenants.tokens import Caller

# A kick-off over a cap is told to come back after this long: jobs take minutes.
CAP_RETRY_SECONDS = 60


def _caps(caller: Caller) -> tuple[int, int]:
    """(per tenant, per client) caps on jobs queued or running, from the plans."""
    client_plan = caller.client.plan_id or caller.grant.plan_id
    plans = RatePlan.objects.in_bulk({caller.tenant.plan_id, client_plan})
    return (
        plans[caller.tenant.plan_id].export_jobs_per_tenant,
        plans[client_plan].export_jobs_per_client,
    )


def _cap_check(caller: Caller) -> None:
    """429 when the tenant or the client has as many exports queued or running as its plan
    allows. Kick-offs of one tenant take turns here (a transaction-scoped advisory lock),
    so two at once cannot both see room for one."""
    tenant_advisory_lock("export kick-off")
    tenant_cap, client_cap = _caps(caller)
    active = ExportJob.objects.filter(status__in=ACTIVE_STATUSES)
    if active.count() >= tenant_cap:
        who, cap = "the tenant", tenant_cap
    elif active.filter(client_id=caller.client.client_id).count() >= client_cap:
        who, cap = "this client", client_cap
    else:
        return
    raise FhirError(
        429,
        IssueCode.THROTTLED,
        f"{who} already has {cap} export(s) queued or running, as many as its plan allows; "
        f"retry after {CAP_RETRY_SECONDS} s",
        reason=str(ThrottleReason.EXPORT_JOBS),
        headers={"Retry-After": str(CAP_RETRY_SECONDS)},
    )


def export_kickoff(
    *,
    caller: Caller,
    request: ExportRequest,
    group_id: str,
    request_url: str,
    transaction_time: datetime,
) -> ExportJob:
    """Create the job and queue it for a worker once the kick-off commits. Runs in the
    tenant part's transaction, in the caller's schema."""
    # Here, not at the top: the task's module imports the runner, which imports this one.
    from fhirplatform.fhir.export.tasks import export_send

    _cap_check(caller)
    job = ExportJob.objects.create(
        client_id=caller.client.client_id,
        grant_pk=caller.grant.pk,
        scopes=scopes_text(caller.scopes),
        purpose=caller.purpose or "",
        level=request.level,
        group_id=group_id,
        resource_types=request.resource_types,
        since=request.since,
        type_filters=request.type_filters,
        elements=request.elements,
        patients=request.patients,
        output_format=request.output_format,
        request_url=request_url,
        request_issues=request.skipped,
        transaction_time=transaction_time,
        heartbeat_at=transaction_time,  # queued: when it was sent to the workers
    )
    schema = schema_current()
    transaction.on_commit(lambda: export_send(tenant_schema=schema, job_id=str(job.id)))
    return job


def export_cancel(*, job: ExportJob) -> None:
    """Cancel a job in any state and delete its files; a worker running it stops at its
    next file (and deletes what it was writing). The job answers 404 from now on."""
    now = timezone.now()
    with transaction.atomic():
        locked = ExportJob.objects.select_for_update().get(pk=job.pk)
        locked.status = ExportStatus.CANCELLED
        locked.finished_at = locked.finished_at or now
        locked.expires_at = now
        locked.save(update_fields=["status", "finished_at", "expires_at"])
        locked.files.all().delete()
    files_delete(schema=schema_current(), job_id=job.pk)


def export_expire(*, now: datetime | None = None) -> int:
    """Delete the jobs (and files) of the current schema whose files have expired:
    finished ones past their retention, cancelled ones. How many jobs went."""
    now = now or timezone.now()
    expired = ExportJob.objects.filter(
        status__in=(ExportStatus.DONE, ExportStatus.FAILED, ExportStatus.CANCELLED),
        expires_at__lte=now,
    )
    gone = 0
    for job_id in expired.values_list("pk", flat=True):
        files_delete(schema=schema_current(), job_id=job_id)
        ExportJob.objects.filter(pk=job_id).delete()
        gone += 1
    return gone


def retention_end(finished_at: datetime) -> datetime:
    return finished_at + timedelta(seconds=settings.EXPORT_RETENTION_SECONDS)
