"""Reads of bulk export jobs for their caller: the job, its progress, its manifest, its
files. One rule decides who sees a job: its own client, on the tenant it ran in, while it
is neither cancelled nor expired; anyone else gets the 404 a missing job gets."""

import uuid
from typing import Any

from django.utils import timezone

from fhirplatform.errors import not_found
from fhirplatform.fhir.export.models import ExportFile, ExportJob, ExportStatus, FileKind
from fhirplatform.fhir.models import RELATIVE_REFERENCE, Resource, id_valid
from tenants.tokens import Caller


def export_job_for(*, caller: Caller, job_id: str) -> ExportJob:
    """The caller's job (in the current schema, the caller's tenant's), or the shared 404."""
    try:
        key = uuid.UUID(job_id)
    except ValueError:
        raise not_found() from None
    job = (
        ExportJob.objects.filter(pk=key, client_id=caller.client.client_id)
        .exclude(status=ExportStatus.CANCELLED)
        .first()
    )
    if job is None or (job.expires_at is not None and job.expires_at <= timezone.now()):
        raise not_found()
    return job


def export_file_for(*, job: ExportJob, name: str) -> ExportFile:
    """A finished job's file by the name in its URL, or the shared 404."""
    if job.status != ExportStatus.DONE:
        raise not_found()
    file = job.files.filter(name=name).first()
    if file is None:
        raise not_found()
    return file


def export_progress(job: ExportJob) -> str:
    """X-Progress: where a queued or running job stands, in words."""
    if job.status == ExportStatus.QUEUED:
        return "queued"
    types = job.resource_types
    current = types[min(job.type_index, len(types) - 1)]
    return (
        f"{job.written} resources written; at {current} "
        f"({min(job.type_index + 1, len(types))} of {len(types)} types)"
    )


def export_file_url(*, base_url: str, job: ExportJob, name: str) -> str:
    return f"{base_url}/$export-file/{job.pk}/{name}"


def export_status_url(*, base_url: str, job: ExportJob) -> str:
    return f"{base_url}/$export-status/{job.pk}"


def export_manifest(*, job: ExportJob, base_url: str) -> dict[str, Any]:
    """The completion manifest of a finished job (Bulk Data IG v2)."""
    files = list(job.files.all())
    return {
        "transactionTime": job.transaction_time.isoformat().replace("+00:00", "Z"),
        "request": job.request_url,
        "requiresAccessToken": True,
        "output": [
            {
                "type": f.resource_type,
                "url": export_file_url(base_url=base_url, job=job, name=f.name),
                "count": f.count,
            }
            for f in files
            if f.kind == FileKind.OUTPUT
        ],
        "deleted": [],
        "error": [
            {
                "type": "OperationOutcome",
                "url": export_file_url(base_url=base_url, job=job, name=f.name),
            }
            for f in files
            if f.kind == FileKind.ERROR
        ],
    }


def group_members(*, group_id: str) -> list[str]:
    """The ids of a stored Group's active Patient members; the shared 404 for no Group.

    Not decided by consent: a Group sits in every member's compartment, so one member's
    denial would hide it, and with it the other members' data. Its membership only says
    whose compartments to export; each of them is consent-filtered in the export itself,
    and the Group is exported only where the caller may see it."""
    if not id_valid(group_id):
        raise not_found()
    content = (
        Resource.objects.filter(resource_type="Group", logical_id=group_id, deleted=False)
        .values_list("content", flat=True)
        .first()
    )
    if content is None:
        raise not_found()
    members: list[str] = []
    for member in content.get("member") or []:
        entity = member.get("entity") if isinstance(member, dict) else None
        reference = entity.get("reference") if isinstance(entity, dict) else None
        match = RELATIVE_REFERENCE.fullmatch(reference) if isinstance(reference, str) else None
        if match and match["type"] == "Patient" and not member.get("inactive"):
            members.append(match["id"])
    return list(dict.fromkeys(members))
