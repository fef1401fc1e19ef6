from django.urls import path, re_path

from fhirplatform.fhir import audit_views, views
from fhirplatform.fhir.smart import SmartConfigurationView
from fhirplatform.resource_types import TYPE_CHARS

_TYPE = rf"(?P<resource_type>{TYPE_CHARS})"
_ID = r"(?P<logical_id>[^/]{1,200})"
_VERSION = r"(?P<version_id>[^/]{1,64})"
# An AuditEvent's id (a FHIR id): `_history` and `_search` fall through to the store's
# routes, which refuse AuditEvent (fhirplatform/resource_types.py NOT_STORED).
_AUDIT_ID = r"(?P<logical_id>[A-Za-z0-9\-.]{1,64})"

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
