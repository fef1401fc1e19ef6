"""Operators' actions on governance and tenant data, in the public trail.

Every add, change and delete the admin logs (ModelAdmin.log_addition, log_change,
log_deletions, which the admin's own views and our actions call) is also an audit event:
`AuditedAdmin` is the ModelAdmin base of every governance model (tenants, partners,
clients, grants, plans, overrides, the kill switch, cache rules). Pages of our own (the
consent policy) call `governance_recorded` directly. An action that cannot be recorded
fails: the event is written in the admin request's transaction.
"""

from typing import Any

from django.contrib import admin
from django.db.models import Model, QuerySet
from django.http import HttpRequest

from audit.models import Interaction
from audit.services import AuditRecord, audit_write, request_basics

PUBLIC = "public"


def _tenant_slug(obj: Model) -> str:
    """The tenant an object belongs to (or is): blank for platform-wide objects."""
    tenant = getattr(obj, "tenant", None)
    if tenant is not None:
        return str(getattr(tenant, "slug", ""))
    return str(getattr(obj, "slug", "")) if obj._meta.label == "tenants.Tenant" else ""


def governance_recorded(
    *,
    request: HttpRequest,
    what: str,
    object_id: str,
    action: str,
    tenant: str = "",
    detail: str = "",
) -> None:
    """Record one operator action (`action`: added, changed, deleted, or a verb of the
    page) on `what` (`app.model`, or a name of our own pages) in the public trail."""
    audit_write(
        record=AuditRecord(
            **request_basics(request),
            interaction=Interaction.ADMIN,
            status=200,
            tenant=tenant,
            actor=request.user.get_username(),
            resource_type=what,
            resource_id=object_id,
            query=f"{request.method} {request.path}: {detail}" if detail else request.path,
            outcome=action,
        ),
        schema=PUBLIC,
    )


def _object_recorded(request: HttpRequest, obj: Model, action: str, message: Any) -> None:
    governance_recorded(
        request=request,
        what=obj._meta.label_lower,
        object_id=str(obj.pk),
        action=action,
        tenant=_tenant_slug(obj),
        detail=f"{obj} {message}".strip() if message else str(obj),
    )


class AuditedAdmin(admin.ModelAdmin):
    """A ModelAdmin whose every logged action is also an audit event (module docstring)."""

    def log_addition(self, request: HttpRequest, obj: Model, message: Any) -> Any:
        entry = super().log_addition(request, obj, message)
        _object_recorded(request, obj, "added", message)
        return entry

    def log_change(self, request: HttpRequest, obj: Model, message: Any) -> Any:
        entry = super().log_change(request, obj, message)
        _object_recorded(request, obj, "changed", message)
        return entry

    def log_deletions(self, request: HttpRequest, queryset: QuerySet[Any]) -> Any:
        entries = super().log_deletions(request, queryset)
        for obj in queryset:
            _object_recorded(request, obj, "deleted", "")
        return entries
