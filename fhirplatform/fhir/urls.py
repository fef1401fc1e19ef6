from django.urls import path, re_path

from fhirplatform.fhir import audit_views, views
from fhirplatform.fhir.export import views as export
from fhirplatform.fhir.operations import views as operations
from fhirplatform.fhir.smart import SmartConfigurationView
from fhirplatform.resource_types import TYPE_CHARS

_TYPE = rf"(?P<resource_type>{TYPE_CHARS})"
_ID = r"(?P<logical_id>[^/]{1,200})"
_VERSION = r"(?P<version_id>[^/]{1,64})"
# An AuditEvent's id (a FHIR id): `_history` and `_search` fall through to the store's
# routes, which refuse AuditEvent (fhirplatform/resource_types.py NOT_STORED).
_AUDIT_ID = r"(?P<logical_id>[A-Za-z0-9\-.]{1,64})"
_OPERATION = r"\$(?P<operation>[^/]{1,200})"
_JOB = r"(?P<job_id>[^/]{1,64})"
_FILE = r"(?P<name>[A-Za-z]{1,64}\.[0-9]{3,9}\.ndjson)"

urlpatterns: list = [
    path(
        ".well-known/smart-configuration",
        SmartConfigurationView.as_view(),
        name="smart-configuration",
    ),
    path("", views.SystemView.as_view(), name="fhir-system"),
    path("metadata", views.MetadataView.as_view(), name="fhir-metadata"),
    path("_history", views.HistoryView.as_view(), name="fhir-history-system"),
    # The audit trail, served from the trail itself: before the store's own type routes.
    path("AuditEvent", audit_views.AuditEventSearchView.as_view(), name="fhir-audit-search"),
    re_path(
        rf"^AuditEvent/{_AUDIT_ID}$",
        audit_views.AuditEventReadView.as_view(),
        name="fhir-audit-read",
    ),
    # Bulk export (fhirplatform/fhir/export), before the operations' catch-all routes.
    path("$export", export.ExportKickoffView.as_view(), name="fhir-export"),
    path("Patient/$export", export.PatientExportKickoffView.as_view(), name="fhir-export-patient"),
    re_path(
        rf"^Group/{_ID}/\$export$",
        export.GroupExportKickoffView.as_view(),
        name="fhir-export-group",
    ),
    re_path(
        rf"^\$export-status/{_JOB}$", export.ExportStatusView.as_view(), name="fhir-export-status"
    ),
    re_path(
        rf"^\$export-file/{_JOB}/{_FILE}$", export.ExportFileView.as_view(), name="fhir-export-file"
    ),
    # Operations, before the type and instance routes, which would read `$name` as an id.
    re_path(
        rf"^Patient/{_ID}/\$everything$",
        operations.EverythingView.as_view(),
        name="fhir-patient-everything",
    ),
    re_path(r"^Observation/\$lastn$", operations.LastnView.as_view(), name="fhir-lastn"),
    re_path(rf"^{_TYPE}/\$validate$", operations.ValidateView.as_view(), name="fhir-validate-type"),
    re_path(
        rf"^{_TYPE}/{_ID}/\$validate$",
        operations.ValidateView.as_view(),
        name="fhir-validate-instance",
    ),
    re_path(
        rf"^{_OPERATION}$", operations.UnknownOperationView.as_view(), name="fhir-operation-system"
    ),
    re_path(
        rf"^{_TYPE}/{_OPERATION}$",
        operations.UnknownOperationView.as_view(),
        name="fhir-operation-type",
    ),
    re_path(
        rf"^{_TYPE}/{_ID}/{_OPERATION}$",
        operations.UnknownOperationView.as_view(),
        name="fhir-operation-instance",
    ),
    re_path(rf"^{_TYPE}$", views.TypeView.as_view(), name="fhir-type"),
    re_path(rf"^{_TYPE}/_search$", views.TypeSearchView.as_view(), name="fhir-search"),
    re_path(rf"^{_TYPE}/_history$", views.HistoryView.as_view(), name="fhir-history-type"),
    re_path(rf"^{_TYPE}/{_ID}$", views.InstanceView.as_view(), name="fhir-instance"),
    re_path(
        rf"^{_TYPE}/{_ID}/_history$", views.HistoryView.as_view(), name="fhir-history-instance"
    ),
    re_path(
        rf"^{_TYPE}/{_ID}/_history/{_VERSION}$", views.VersionView.as_view(), name="fhir-vread"
    ),
]
