"""Operators set TTL rules per tenant and resource type, and see every tenant's cache on
"Cache and consent" (hit ratio, entries, invalidations, consent denials, its rules)."""

from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path

from audit.governance import AuditedAdmin
from fhirplatform.cache.models import CacheRule
from fhirplatform.cache.selectors import cache_overview
from fhirplatform.cache.services import cache_rule_delete, cache_rule_set
from fhirplatform.cache.type_classes import NOT_CACHED_BY_DEFAULT, REFERENCE_DATA, rule_default


@admin.register(CacheRule)
class CacheRuleAdmin(AuditedAdmin):
    list_display = ["tenant", "resource_type", "ttl_seconds", "swr_seconds", "updated"]
    list_filter = ["tenant"]
    search_fields = ["tenant__slug", "resource_type"]
    change_list_template = "admin/cache/cacherule/change_list.html"

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        # A rule is one tenant's rule for one type: another pair is another rule.
        return ["tenant", "resource_type", "updated"] if obj else ["updated"]

    def save_model(self, request: HttpRequest, obj: CacheRule, form: Any, change: bool) -> None:
        saved = cache_rule_set(
            tenant=obj.tenant,
            resource_type=obj.resource_type,
            ttl_seconds=obj.ttl_seconds,
            swr_seconds=obj.swr_seconds,
        )
        obj.pk = saved.pk

    def delete_model(self, request: HttpRequest, obj: CacheRule) -> None:
        cache_rule_delete(rule=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[CacheRule]) -> None:
        for rule in queryset:
            cache_rule_delete(rule=rule)

    def get_urls(self) -> list[URLPattern]:
        overview = path(
            "overview/",
            self.admin_site.admin_view(self.overview_view),
            name="cache_overview",
        )
        return [overview, *super().get_urls()]

    def overview_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "title": "Cache and consent",
            "opts": self.model._meta,
            "rows": cache_overview(),
            "reference_types": sorted(REFERENCE_DATA),
            "not_cached": sorted(NOT_CACHED_BY_DEFAULT),
            "phi_default": rule_default("Observation"),
            "reference_default": rule_default("Organization"),
        }
        return TemplateResponse(request, "admin/cache/overview.html", context)
