"""The worker's side of a bulk export: one job, type after type, file after file.

- **What**: the job's rows (selection.py), without what the caller's consent decision
  denies; the manifest's error file gives the counts left out, never ids.
- **How**: each file is one query read through a server-side cursor in batches, written
  to a temporary file, moved into the export storage whole, and only then recorded,
  together with where the next file starts. A worker killed mid-file leaves an
  unrecorded file at most; the next run deletes it and resumes after the last recorded
  one.
- **Who**: the job's client on its grant, checked again at the start of every run and
  before every file: a revoked client or grant, a suspended tenant, or scopes narrowed
  below the job's types fail the job. Each type is decided on the consents as they are
  when the worker starts it.
- **Fair**: between batches the worker takes turns with interactive requests, and waits
  while they hold the adaptive limit's export share (pacing.py).
"""

import time
from dataclasses import dataclass
from datetime import timedelta
from typing import IO

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet, Sum
from django.utils import timezone

from fhirplatform.errors import Issue, IssueCode, Severity, operation_outcome
from fhirplatform.fhir.caching import CacheState, consent_guard
from fhirplatform.fhir.export.models import (
    ExportFile,
    ExportJob,
    ExportStatus,
    FileKind,
)
from fhirplatform.fhir.export.pacing import yield_to_interactive
from fhirplatform.fhir.export.params import skipped_issues
from fhirplatform.fhir.export.selection import (
    START,
    Position,
    Selection,
    file_batches,
    position_of,
    types_held,
)
from fhirplatform.fhir.export.services import retention_end
from fhirplatform.fhir.export.shaping import elements_shaper
from fhirplatform.fhir.export.storage import (
    export_storage,
    file_store,
    file_writing,
    files_delete,
    job_prefix,
)
from fhirplatform.fhir.numbers import exact_dumps
from fhirplatform.schemas import schema_current
from tenants.models import Grant
from tenants.scopes import Interaction, scopes_allow, scopes_parse
from tenants.selectors import tenant_fhir_base
from tenants.tokens import Caller, access_switched_off, caller_of

# The longest a worker pauses for interactive traffic while writing one file.
MAX_YIELD_SECONDS = 5.0


class JobStopped(Exception):
    """The job must fail, for the reason given (its `error`)."""


class JobLost(Exception):
    """The job is no longer this run's: cancelled, or taken over by a later run."""


@dataclass
class _Run:
    job: ExportJob
    rows: Selection
    schema: str


def _caller(job: ExportJob) -> Caller:
    """The job's caller as its grant stands now; JobStopped when it may no longer export."""
    grant = (
        Grant.objects.select_related("client__partner", "tenant")
        .filter(pk=job.grant_pk, client__client_id=job.client_id)
        .first()
    )
    if grant is None:  # the client is gone, or holds this grant no more
        raise JobStopped("The client has been revoked")
    # The rules a token is refused by (tenants/tokens.py), decided once for both.
    if off := access_switched_off(tenant=grant.tenant, client=grant.client, grant=grant):
        raise JobStopped(off.issues[0].diagnostics)
    caller = caller_of(
        tenant=grant.tenant,
        client=grant.client,
        grant=grant,
        scopes=scopes_parse(job.scopes),
        purpose=job.purpose,
        token_id=f"export:{job.pk}",
    )
    if not all(scopes_allow(caller.scopes, t, Interaction.EXPORT) for t in job.resource_types):
        raise JobStopped("The client's scopes no longer cover the exported types")
    return caller


def _write_file(
    run: _Run, handle: IO[bytes], resource_type: str, after: Position
) -> tuple[int, Position]:
    """Write the next file of the type; (resources written, the last row's position).
    Between batches the worker pauses for interactive traffic, for a bounded time per
    file, so the heartbeat renewed between files stays fresh."""
    shape = elements_shaper(run.job.elements, resource_type)
    count, last = 0, after
    yield_budget = MAX_YIELD_SECONDS
    with transaction.atomic():  # the server-side cursor lives in one transaction
        started = time.monotonic()
        for batch in file_batches(run.rows, resource_type, after):
            if shape is None:
                handle.write(("\n".join(row[2] for row in batch) + "\n").encode())
            else:
                handle.write(b"".join(exact_dumps(shape(row[2])) + b"\n" for row in batch))
            count, last = count + len(batch), position_of(batch[-1])
            if yield_budget > 0:
                worked = time.monotonic() - started
                yield_budget -= yield_to_interactive(
                    worked_seconds=worked, max_seconds=yield_budget
                )
                started = time.monotonic()
    return count, last


def _ours(job: ExportJob) -> QuerySet[ExportJob]:
    """The job, while it is still this run's to write: running, and not claimed by a later
    run (which a heartbeat gone stale lets the reaper start)."""
    return ExportJob.objects.filter(pk=job.pk, status=ExportStatus.RUNNING, attempts=job.attempts)


def _renew(job: ExportJob) -> None:
    if not _ours(job).update(heartbeat_at=timezone.now()):
        raise JobLost()


def _record(run: _Run, file: ExportFile, *, next_type: int, after: Position) -> None:
    """Record a stored file and where the next one starts, if the job is still running;
    otherwise the stored file goes again."""
    job = run.job
    with transaction.atomic():
        if _ours(job).select_for_update().first() is None:
            export_storage().delete(file.storage_name)
            raise JobLost()
        file.save()
        job.type_index, (job.after_updated, job.after_pk) = next_type, after
        job.written += file.count if file.kind == FileKind.OUTPUT else 0
        job.heartbeat_at = timezone.now()
        job.save(
            update_fields=["type_index", "after_updated", "after_pk", "written", "heartbeat_at"]
        )


def _stored(
    run: _Run,
    handle: IO[bytes],
    *,
    resource_type: str,
    sequence: int,
    count: int,
    kind: FileKind = FileKind.OUTPUT,
) -> ExportFile:
    """Hand a written file to the export storage under its name (`Type.NNN.ndjson`, the
    name its URL carries); the record to make of it once the job is known to be ours."""
    name = f"{resource_type}.{sequence:03d}.ndjson"
    storage_name = job_prefix(schema=run.schema, job_id=run.job.pk) + name
    size = file_store(handle, storage_name)
    return ExportFile(
        job=run.job,
        kind=kind,
        resource_type=resource_type,
        sequence=sequence,
        name=name,
        storage_name=storage_name,
        count=count,
        size=size,
    )


def _export_type(run: _Run, index: int, resource_type: str) -> None:
    job = run.job
    after: Position = (job.after_updated, job.after_pk)
    sequence = job.files.filter(resource_type=resource_type, kind=FileKind.OUTPUT).count()
    while True:
        _renew(job)
        run.rows.caller = _caller(job)  # still allowed, file after file
        with file_writing() as handle:
            count, last = _write_file(run, handle, resource_type, after)
            if count == 0:
                break
            sequence += 1
            file = _stored(run, handle, resource_type=resource_type, sequence=sequence, count=count)
        _record(run, file, next_type=index, after=last)
        after = last
        if count < settings.EXPORT_FILE_MAX_RESOURCES:
            break
    if run.rows.consent.may_deny(resource_types=[resource_type]):
        # Left out under consent: every selected row less those written.
        written = job.files.filter(resource_type=resource_type, kind=FileKind.OUTPUT)
        total = written.aggregate(total=Sum("count"))["total"] or 0
        if denied := run.rows.selected(resource_type).count() - total:
            job.denied[resource_type] = denied
    job.type_index, (job.after_updated, job.after_pk) = index + 1, START
    started = _ours(job).update(
        type_index=job.type_index, after_updated=None, after_pk=0, denied=job.denied
    )
    if not started:
        raise JobLost()


def _error_file(run: _Run) -> None:
    """The manifest's error file: what a lenient kick-off skipped, and per type how many
    resources consent left out. Counts only: never a patient's or a resource's id."""
    job = run.job
    issues = skipped_issues(job.request_issues) + [
        Issue(
            code=IssueCode.SUSPENDED,
            severity=Severity.INFORMATION,
            diagnostics=f"{count} {resource_type} resource(s) left out under patients' "
            "consent or the tenant's consent policy",
        )
        for resource_type, count in sorted(job.denied.items())
    ]
    if not issues:
        return
    with file_writing() as handle:
        for issue in issues:
            handle.write(exact_dumps(operation_outcome(issue)) + b"\n")
        error = _stored(
            run,
            handle,
            resource_type="OperationOutcome",
            sequence=1,
            count=len(issues),
            kind=FileKind.ERROR,
        )
    _record(run, error, next_type=len(job.resource_types), after=START)


def _claim(job_id: str) -> ExportJob | None:
    """Take the job for this run: a queued one, or a running one whose worker died (its
    heartbeat is stale). None when there is nothing to do."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.EXPORT_STALE_SECONDS)
    with transaction.atomic():
        job = ExportJob.objects.select_for_update(skip_locked=True).filter(pk=job_id).first()
        if job is None:
            return None
        orphaned = job.status == ExportStatus.RUNNING and (
            job.heartbeat_at is None or job.heartbeat_at < stale
        )
        if job.status != ExportStatus.QUEUED and not orphaned:
            return None
        job.attempts += 1
        if job.attempts > settings.EXPORT_MAX_ATTEMPTS:
            _finish(job, ExportStatus.FAILED, "The export's worker stopped too many times")
            return None
        job.status = ExportStatus.RUNNING
        job.started_at = job.started_at or now
        job.heartbeat_at = now
        job.save(update_fields=["attempts", "status", "started_at", "heartbeat_at"])
    return job


def _finish(job: ExportJob, status: ExportStatus, error: str = "") -> None:
    now = timezone.now()
    job.status, job.error, job.finished_at = status, error, now
    job.expires_at = retention_end(now)
    job.save(update_fields=["status", "error", "finished_at", "expires_at"])


def export_run(*, job_id: str) -> str:
    """Run (or resume) one job in the current tenant schema; the job's status after."""
    job = _claim(job_id)
    if job is None:
        return "skipped"
    schema = schema_current()
    # What a killed run stored but never recorded.
    files_delete(
        schema=schema,
        job_id=job.pk,
        keep=frozenset(job.files.values_list("storage_name", flat=True)),
    )
    try:
        caller = _caller(job)
        rows = Selection(
            job=job,
            caller=caller,
            consent=consent_guard(caller=caller, state=CacheState(key=None)),
            base_url=tenant_fhir_base(caller.tenant),
        )
        run = _Run(job=job, rows=rows, schema=schema)
        held = types_held(job.resource_types[job.type_index :])
        for index in range(job.type_index, len(job.resource_types)):
            if job.resource_types[index] not in held:
                continue
            # Type after type, decided on the consents as they are now.
            run.rows.consent = consent_guard(caller=run.rows.caller, state=CacheState(key=None))
            _export_type(run, index, job.resource_types[index])
        _error_file(run)
    except JobLost:
        return "lost"
    except JobStopped as stopped:
        with transaction.atomic():
            failed = _ours(job).select_for_update().first()
            if failed is not None:
                _finish(failed, ExportStatus.FAILED, str(stopped))
                failed.files.all().delete()
        if failed is not None:
            files_delete(schema=schema, job_id=job.pk)
        return str(ExportStatus.FAILED)
    with transaction.atomic():
        done = _ours(job).select_for_update().first()
        if done is None:
            return "lost"
        _finish(done, ExportStatus.DONE)
    return str(ExportStatus.DONE)


def jobs_unattended() -> list[str]:
    """Jobs of the current schema no worker is on: running ones whose worker stopped
    renewing their heartbeat, and queued ones no worker took up since they were last sent
    (their message lost, or never sent while the broker was down). The queued ones count
    as sent from now on."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.EXPORT_STALE_SECONDS)
    active = ExportJob.objects.filter(status__in=(ExportStatus.QUEUED, ExportStatus.RUNNING))
    unattended = active.filter(Q(heartbeat_at__lt=stale) | Q(heartbeat_at=None))
    found = [str(pk) for pk in unattended.values_list("pk", flat=True)]
    ExportJob.objects.filter(pk__in=found, status=ExportStatus.QUEUED).update(heartbeat_at=now)
    return found
