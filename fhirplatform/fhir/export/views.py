"""The Bulk Data endpoints. Each goes through the FHIR request pipeline like any other
(pipeline.py): the token, the rate limits (`export` for kick-offs, the stricter
`export-poll` for status and cancel), the audit event of every kick-off, poll, download
and cancel.

    kick-off  GET|POST [base]/$export, [base]/Patient/$export, [base]/Group/id/$export
              (Prefer: respond-async) -> 202, Content-Location: the status URL
    status    GET [base]/$export-status/<job> -> 202 (X-Progress, Retry-After) | 200 manifest
              | 429 when polled before its Retry-After | 500 for a failed job
    cancel    DELETE [base]/$export-status/<job> -> 202, in any state; its files go
    download  GET [base]/$export-file/<job>/<name> -> the NDJSON file, streamed

Status, cancel and download check the caller every time: the token (a revoked client's
is refused), the job's client (anyone else's token gets the 404 a missing job gets) and
scopes that still cover every exported type.
"""

from typing import Any

from django.conf import settings
from django.http import FileResponse
from django.utils import timezone
from django.utils.http import http_date
from rest_framework.request import Request
from rest_framework.response import Response

from fhirplatform.errors import FhirError, Issue, IssueCode, Severity, not_found, operation_outcome
from fhirplatform.fhir.export import selectors as jobs
from fhirplatform.fhir.export.models import ExportJob, ExportLevel, ExportStatus
from fhirplatform.fhir.export.pacing import poll_wait
from fhirplatform.fhir.export.params import (
    NDJSON,
    export_request_parse,
    exportable_types,
    parameters_from_body,
    skipped_issues,
)
from fhirplatform.fhir.export.services import export_cancel, export_kickoff
from fhirplatform.fhir.export.storage import export_storage
from fhirplatform.fhir.http import (
    FhirJSONParser,
    FhirJSONRenderer,
    PlainJSONParser,
    PlainJSONRenderer,
    query_pairs,
)
from fhirplatform.fhir.pipeline import Description, Endpoint
from fhirplatform.fhir.views import BaseFhirView, prefer_parse
from fhirplatform.limits.codes import EndpointClass, ThrottleReason
from fhirplatform.schemas import tenant_schema
from tenants.scopes import Interaction, scope_require
from tenants.tokens import Caller

GROUP = "Group"
_LEVEL_TYPE = {ExportLevel.SYSTEM: "*", ExportLevel.PATIENT: "Patient", ExportLevel.GROUP: GROUP}


class NdjsonRenderer(FhirJSONRenderer):
    """Downloads answer clients that Accept NDJSON; an error is then one JSON line."""

    media_type = NDJSON
    format = "ndjson"


class PlainNdjsonRenderer(NdjsonRenderer):
    media_type = "application/ndjson"


class ExportKickoffView(BaseFhirView):
    parser_classes = [FhirJSONParser, PlainJSONParser]
    level: ExportLevel = ExportLevel.SYSTEM

    @classmethod
    def endpoint(cls, method: str, kwargs: dict[str, Any]) -> Endpoint:
        return Endpoint(Interaction.EXPORT, _LEVEL_TYPE[cls.level], EndpointClass.EXPORT)

    def describe(self, request: Request, **kwargs: Any) -> Description:
        return Description(*self.endpoint(request.method or "", kwargs), 1)

    def require_scope(self, caller: Caller, description: Description) -> None:
        """Read on some type the level exports. Which of them are exported, the parameters
        decide (params.py): every requested type the scopes let the caller read."""
        if not exportable_types(level=self.level, caller=caller):
            scope_require(
                scopes=caller.scopes,
                resource_type=description.resource_type,
                interaction=Interaction.EXPORT,
            )

    def get(self, request: Request, tenant: str, logical_id: str = "") -> Response:
        return self._kickoff(request, query_pairs(request), posted=False, group_id=logical_id)

    def post(self, request: Request, tenant: str, logical_id: str = "") -> Response:
        pairs = parameters_from_body(self.body(request))
        if request.query_params:
            raise FhirError(
                400, IssueCode.INVALID, "A POST kick-off takes its parameters in the body"
            )
        return self._kickoff(request, pairs, posted=True, group_id=logical_id)

    def _kickoff(
        self, request: Request, pairs: list[tuple[str, Any]], *, posted: bool, group_id: str
    ) -> Response:
        prefer = prefer_parse(request)
        if "respond-async" not in prefer:
            raise FhirError(400, IssueCode.REQUIRED, "A bulk export needs Prefer: respond-async")
        asked = export_request_parse(
            level=self.level,
            params=pairs,
            caller=self.caller,
            base_url=self.base_url,
            lenient=prefer.get("handling") == "lenient",
            posted=posted,
        )
        if self.level is ExportLevel.GROUP:
            members = self._members(group_id)
            if asked.patients:  # `patient` narrows a Group export to those of its members
                asked.patients = [p for p in asked.patients if p in members]
            else:
                asked.patients = members
        job = export_kickoff(
            caller=self.caller,
            request=asked,
            group_id=group_id,
            request_url=settings.PUBLIC_BASE_URL + request.get_full_path(),
            transaction_time=timezone.now(),
        )
        outcome = operation_outcome(
            Issue(
                code=IssueCode.INFORMATIONAL,
                severity=Severity.INFORMATION,
                diagnostics=f"Export {job.pk} is queued: {len(job.resource_types)} type(s)",
            ),
            *skipped_issues(asked.skipped),
        )
        status_url = jobs.export_status_url(base_url=self.base_url, job=job)
        return Response(outcome, status=202, headers={"Content-Location": status_url})

    def _members(self, group_id: str) -> list[str]:
        scope_require(scopes=self.caller.scopes, resource_type=GROUP, interaction=Interaction.READ)
        return jobs.group_members(group_id=group_id)


class PatientExportKickoffView(ExportKickoffView):
    level = ExportLevel.PATIENT


class GroupExportKickoffView(ExportKickoffView):
    level = ExportLevel.GROUP


class _JobView(BaseFhirView):
    """A view of one job: the caller must still hold scopes for every type it exports."""

    endpoint_class = EndpointClass.EXPORT_POLL

    @classmethod
    def endpoint(cls, method: str, kwargs: dict[str, Any]) -> Endpoint:
        return Endpoint(Interaction.EXPORT, "*", cls.endpoint_class)

    def describe(self, request: Request, **kwargs: Any) -> Description:
        return Description(*self.endpoint(request.method or "", kwargs), 1)

    # The caller's job, as the scope step read it (None: none the caller may see).
    found: ExportJob | None = None

    def require_scope(self, caller: Caller, description: Description) -> None:
        """Read for every type the job exports. A job that is not the caller's is not
        checked here: the handler answers it the shared 404, after the rate limits."""
        with tenant_schema(caller.tenant, atomic=False):
            try:
                self.found = jobs.export_job_for(caller=caller, job_id=self.kwargs["job_id"])
            except FhirError:
                self.found = None
                return
        for resource_type in self.found.resource_types:
            scope_require(
                scopes=caller.scopes, resource_type=resource_type, interaction=Interaction.EXPORT
            )

    def job(self) -> ExportJob:
        """The job the scope step found: read once per request."""
        if self.found is None:
            raise not_found()
        return self.found


class ExportStatusView(_JobView):
    def get(self, request: Request, tenant: str, job_id: str) -> Response:
        job = self.job()
        if job.status in (ExportStatus.QUEUED, ExportStatus.RUNNING):
            retry_after = settings.EXPORT_POLL_SECONDS
            wait = poll_wait(tenant_slug=tenant, job_id=job.pk, retry_after=retry_after)
            if wait:
                raise FhirError(
                    429,
                    IssueCode.THROTTLED,
                    f"Polled before its Retry-After: retry after {wait} s",
                    reason=str(ThrottleReason.EXPORT_POLL),
                    headers={"Retry-After": str(wait)},
                )
            headers = {"X-Progress": jobs.export_progress(job), "Retry-After": str(retry_after)}
            return Response(None, status=202, headers=headers)
        if job.status == ExportStatus.FAILED:
            # The job's stored outcome, not a failure of this request: it must not count
            # against the adaptive limit as a server error would.
            self.state.replayed = True
            raise FhirError(500, IssueCode.EXCEPTION, f"The export failed: {job.error}")
        assert job.expires_at is not None
        manifest = jobs.export_manifest(job=job, base_url=self.base_url)
        headers = {"Expires": http_date(job.expires_at.timestamp())}
        return Response(manifest, status=200, headers=headers, content_type="application/json")

    def delete(self, request: Request, tenant: str, job_id: str) -> Response:
        export_cancel(job=self.job())
        return Response(None, status=202)


class ExportFileView(_JobView):
    """One output or error file, streamed from the export storage."""

    endpoint_class = EndpointClass.READ
    renderer_classes = [FhirJSONRenderer, PlainJSONRenderer, NdjsonRenderer, PlainNdjsonRenderer]

    def get(self, request: Request, tenant: str, job_id: str, name: str) -> FileResponse:
        file = jobs.export_file_for(job=self.job(), name=name)
        stream = export_storage().open(file.storage_name, "rb")
        return FileResponse(stream, content_type=NDJSON)
