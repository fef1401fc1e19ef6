"""A tenant's audit trail in the admin: read-only, filtered, newest first, reached from
the tenant's change page. Reading it is itself recorded in that trail (interaction
`admin`, the operator as actor). Needs `audit.view_auditevent`."""

from collections.abc import Callable
from urllib.parse import urlencode

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.views.decorators.http import require_GET

from audit.forms import TrailFilterForm
from audit.models import Interaction
from audit.selectors import PAGE, trail_archives, trail_page
from audit.services import AuditRecord, audit_write, request_basics
from tenants.models import Tenant

VIEW_TRAIL = "audit.view_auditevent"
URL_TRAIL = "tenants_tenant_audit_trail"


def audit_trail_link(tenant: Tenant) -> str:
    """The tenant change page's link to its audit trail."""
    if not tenant.pk:
        return "-"
    url = reverse(f"admin:{URL_TRAIL}", args=[tenant.pk])
    return format_html('<a href="{}">Audit trail</a>', url)


class AuditTrailViews:
    def __init__(self, admin_site: admin.AdminSite) -> None:
        self.admin_site = admin_site

    def urls(self) -> list[URLPattern]:
        view: Callable[..., HttpResponse] = self.admin_site.admin_view(require_GET(self.trail))
        return [path("<int:tenant_id>/audit/", view, name=URL_TRAIL)]

    def trail(self, request: HttpRequest, tenant_id: int) -> HttpResponse:
        if not request.user.has_perm(VIEW_TRAIL):
            raise PermissionDenied
        tenant = get_object_or_404(Tenant, pk=tenant_id)
        form = TrailFilterForm(request.GET)  # every filter is optional: bound even when empty
        valid = form.is_valid()
        events = trail_page(tenant=tenant, filters=form.cleaned_data) if valid else []
        # Reading the trail is an access to it: recorded before the page is shown.
        audit_write(
            record=AuditRecord(
                **request_basics(request),
                interaction=Interaction.ADMIN,
                status=200 if valid else 400,
                tenant=tenant.slug,
                actor=request.user.get_username(),
                resource_type="AuditEvent",
                query=request.get_full_path(),
            ),
            schema=tenant.schema_name,
        )
        older = None
        if len(events) == PAGE:
            params = {k: v for k, v in request.GET.items() if k != "before"}
            older = "?" + urlencode({**params, "before": events[-1].pk})
        context = {
            **self.admin_site.each_context(request),
            "title": f"Audit trail of {tenant.slug}",
            "tenant": tenant,
            "opts": Tenant._meta,
            "form": form,
            "events": events,
            "older": older,
            "archives": trail_archives(tenant=tenant),
        }
        return TemplateResponse(request, "admin/audit/trail.html", context)
