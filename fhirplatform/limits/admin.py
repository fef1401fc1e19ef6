"""Operators edit overrides and the kill switch here; a change reaches every worker within
seconds (the config version in Redis is bumped on commit)."""

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from audit.governance import AuditedAdmin
from fhirplatform.limits.models import LimiterSwitch, LimitOverride, ThrottleEvent
from fhirplatform.limits.services import (
    limit_override_delete,
    limit_override_save,
    limiter_switch_set,
)


@admin.register(LimitOverride)
class LimitOverrideAdmin(AuditedAdmin):
    list_display = [
        "__str__",
        "per_minute",
        "burst_seconds",
        "concurrency",
        "daily_quota",
        "dry_run",
        "updated",
    ]
    list_filter = ["endpoint_class", "dry_run"]
    search_fields = ["tenant__slug", "client__client_id", "resource_type", "note"]
    raw_id_fields = ["tenant", "client"]

    def save_model(self, request: HttpRequest, obj: LimitOverride, form: Any, change: bool) -> None:
        limit_override_save(override=obj)

    def delete_model(self, request: HttpRequest, obj: LimitOverride) -> None:
        limit_override_delete(override=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[LimitOverride]) -> None:
        for override in queryset:
            limit_override_delete(override=override)


@admin.register(LimiterSwitch)
class LimiterSwitchAdmin(AuditedAdmin):
    list_display = ["__str__", "limits_enabled", "updated"]
    actions = ["turn_limits_off", "turn_limits_on"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return not LimiterSwitch.objects.exists()

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: LimiterSwitch, form: Any, change: bool) -> None:
        limiter_switch_set(enabled=obj.limits_enabled)

    @admin.action(description="Kill switch: turn all limits OFF (report only)")
    def turn_limits_off(self, request: HttpRequest, queryset: QuerySet[LimiterSwitch]) -> None:
        switch = limiter_switch_set(enabled=False)
        self.log_change(request, switch, "Kill switch: limits turned off")
        self.message_user(request, "Limits are off platform-wide.", messages.WARNING)

    @admin.action(description="Turn limits back ON")
    def turn_limits_on(self, request: HttpRequest, queryset: QuerySet[LimiterSwitch]) -> None:
        switch = limiter_switch_set(enabled=True)
        self.log_change(request, switch, "Kill switch: limits turned on")
        self.message_user(request, "Limits are enforced again.")


@admin.register(ThrottleEvent)
class ThrottleEventAdmin(AuditedAdmin):
    list_display = [
        "occurred",
        "tenant",
        "client",
        "reason",
        "endpoint_class",
        "policy",
        "count",
        "dry_run",
    ]
    list_filter = ["reason", "endpoint_class", "dry_run"]
    search_fields = ["tenant__slug", "client__client_id"]
    date_hierarchy = "occurred"
    readonly_fields = [f.name for f in ThrottleEvent._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
