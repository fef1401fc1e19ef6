"""Operators' admin for tenants, partners, API clients, grants, plans and tokens.

Every write goes through tenants.services (forms in tenants/forms.py check each field
with the service's own rule first), so the admin, the commands and the portal apply
the same rules. Actions need the model's change permission. Nothing that holds or
names health-data access is deleted here: tenants are suspended, clients and grants
revoked.
"""

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from audit.admin_views import AuditTrailViews, audit_trail_link
from audit.governance import AuditedAdmin
from consent.admin_views import ConsentPolicyViews, consent_policy_link
from tenants import services
from tenants.forms import (
    ApiClientForm,
    GrantForm,
    GrantFormSet,
    TenantForm,
    client_save,
    form_changes,
    grant_save,
    tenant_save,
)
from tenants.models import (
    AccessToken,
    ApiClient,
    ClientSecret,
    ClientStatus,
    Grant,
    GrantStatus,
    Partner,
    RatePlan,
    Tenant,
    TenantStatus,
)
from tenants.selectors import tenant_fhir_base


def _adopt(obj: Any, saved: Any) -> None:
    """The admin goes on with its own object after an add (inlines hang on it): give it
    the row the service saved."""
    for field in saved._meta.concrete_fields:
        setattr(obj, field.attname, getattr(saved, field.attname))
    obj._state.adding = False
    obj._state.db = saved._state.db


@admin.register(RatePlan)
class RatePlanAdmin(AuditedAdmin):
    list_display = [
        "name",
        "priority",
        "read_per_minute",
        "search_per_minute",
        "write_per_minute",
        "concurrency",
        "daily_quota",
        "dry_run",
    ]
    list_filter = ["dry_run"]
    search_fields = ["name", "description"]

    def save_model(self, request: HttpRequest, obj: RatePlan, form: Any, change: bool) -> None:
        if change:
            obj.refresh_from_db()
            services.rate_plan_update(plan=obj, **form_changes(form))
            return
        values = dict(form.cleaned_data)
        _adopt(obj, services.rate_plan_create(**values))

    def delete_model(self, request: HttpRequest, obj: RatePlan) -> None:
        services.rate_plan_delete(plan=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[RatePlan]) -> None:
        for plan in queryset:
            services.rate_plan_delete(plan=plan)


class GrantInline(admin.TabularInline):
    model = Grant
    form = GrantForm
    formset = GrantFormSet
    extra = 0
    can_delete = False
    fields = ["client", "tenant", "scopes", "purposes", "plan", "status", "created"]
    readonly_fields = ["created"]
    autocomplete_fields = ["client", "tenant"]


@admin.register(Tenant)
class TenantAdmin(AuditedAdmin):
    form = TenantForm
    list_display = ["slug", "name", "status", "plan", "data_region", "isolation_tier", "created"]
    list_filter = ["status", "data_region", "isolation_tier", "plan"]
    search_fields = ["slug", "name"]
    readonly_fields = [
        "schema_name",
        "fhir_base",
        "consent_policy",
        "audit_trail",
        "created",
        "deactivated_at",
    ]
    inlines = [GrantInline]
    actions = ["suspend", "activate"]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A tenant holds health data: it is suspended, never deleted from the admin.
        return False

    @admin.display(description="FHIR base")
    def fhir_base(self, tenant: Tenant) -> str:
        return tenant_fhir_base(tenant) if tenant.pk else "-"

    @admin.display(description="Consent")
    def consent_policy(self, tenant: Tenant) -> str:
        return consent_policy_link(tenant)

    @admin.display(description="Audit")
    def audit_trail(self, tenant: Tenant) -> str:
        return audit_trail_link(tenant)

    def get_urls(self) -> list[Any]:
        # The tenant's consent policy and audit trail pages live under its change page
        # (consent/admin_views.py, audit/admin_views.py).
        tenant_pages = ConsentPolicyViews(self.admin_site).urls()
        return tenant_pages + AuditTrailViews(self.admin_site).urls() + super().get_urls()

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = list(super().get_readonly_fields(request, obj))
        return [*fields, "slug"] if obj is not None else fields

    def save_model(self, request: HttpRequest, obj: Tenant, form: Any, change: bool) -> None:
        _adopt(obj, tenant_save(form))

    @admin.action(description="Suspend selected tenants", permissions=["change"])
    def suspend(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        for tenant in queryset:
            services.tenant_set_status(tenant=tenant, status=TenantStatus.SUSPENDED)
            self.log_change(request, tenant, "Suspended")
        self.message_user(request, f"Suspended {queryset.count()} tenant(s).", messages.SUCCESS)

    @admin.action(description="Activate selected tenants", permissions=["change"])
    def activate(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        for tenant in queryset:
            services.tenant_set_status(tenant=tenant, status=TenantStatus.ACTIVE)
            self.log_change(request, tenant, "Activated")
        self.message_user(request, f"Activated {queryset.count()} tenant(s).", messages.SUCCESS)


class ApiClientInline(admin.TabularInline):
    model = ApiClient
    extra = 0
    fields = ["client_id", "name", "status", "created"]
    readonly_fields = ["client_id", "name", "status", "created"]
    show_change_link = True
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Partner)
class PartnerAdmin(AuditedAdmin):
    list_display = ["name", "slug", "contact_email", "created"]
    search_fields = ["name", "slug", "contact_email"]
    # Set once at creation: patients' Consents name the partner by it.
    readonly_fields = ["slug"]
    filter_horizontal = ["members"]
    inlines = [ApiClientInline]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A partner names who held access in tokens and audit: it stays.
        return False

    def save_model(self, request: HttpRequest, obj: Partner, form: Any, change: bool) -> None:
        if change:
            obj.refresh_from_db()
            services.partner_update(partner=obj, **form_changes(form))
            return
        data = form.cleaned_data
        partner = services.partner_create(
            name=data["name"], contact_email=data["contact_email"], members=data["members"]
        )
        _adopt(obj, partner)

    def save_related(
        self, request: HttpRequest, form: Any, formsets: list[Any], change: bool
    ) -> None:
        # Members were saved by the partner service: only the (read-only) inlines are left.
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)


class ClientSecretInline(admin.TabularInline):
    model = ClientSecret
    extra = 0
    fields = ["hint", "created", "expires_at"]
    readonly_fields = ["hint", "created", "expires_at"]
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ApiClient)
class ApiClientAdmin(AuditedAdmin):
    form = ApiClientForm
    list_display = ["client_id", "name", "partner", "status", "created", "revoked_at"]
    list_filter = ["status", "partner"]
    search_fields = ["client_id", "name", "partner__name"]
    readonly_fields = ["client_id", "created", "revoked_at", "deactivated_at"]
    fields = [
        *["client_id", "name", "partner", "status", "plan", "jwks_url", "jwks"],
        *["created", "revoked_at", "deactivated_at"],
    ]
    inlines = [ClientSecretInline, GrantInline]
    actions = ["revoke", "activate"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Clients are created with `create_client`, which returns the secret once.
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Revoked, never deleted: the client stays attributable in tokens and throttle events.
        return False

    def save_model(self, request: HttpRequest, obj: ApiClient, form: Any, change: bool) -> None:
        client_save(form)

    @admin.action(description="Revoke selected clients", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiClient]) -> None:
        for client in queryset.filter(status=ClientStatus.ACTIVE):
            services.client_revoke(client=client)
            self.log_change(request, client, "Revoked")
        self.message_user(request, "Revoked; their tokens stop working now.", messages.SUCCESS)

    @admin.action(description="Re-activate selected clients", permissions=["change"])
    def activate(self, request: HttpRequest, queryset: QuerySet[ApiClient]) -> None:
        for client in queryset.filter(status=ClientStatus.REVOKED):
            services.client_activate(client=client)
            self.log_change(request, client, "Re-activated")
        self.message_user(request, "Re-activated.", messages.SUCCESS)


@admin.register(Grant)
class GrantAdmin(AuditedAdmin):
    form = GrantForm
    list_display = ["client", "tenant", "plan", "status", "scopes", "created"]
    list_filter = ["status", "plan", "tenant"]
    search_fields = ["client__client_id", "client__name", "tenant__slug", "scopes"]
    autocomplete_fields = ["client", "tenant"]
    readonly_fields = ["deactivated_at"]
    actions = ["revoke"]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Revoked, never deleted: deleting would take its tokens' attribution with it.
        return False

    def save_model(self, request: HttpRequest, obj: Grant, form: Any, change: bool) -> None:
        _adopt(obj, grant_save(form))

    @admin.action(description="Revoke selected grants", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[Grant]) -> None:
        for grant in queryset.filter(status=GrantStatus.ACTIVE):
            services.grant_revoke(grant=grant)
            self.log_change(request, grant, "Revoked")
        self.message_user(request, "Revoked.", messages.SUCCESS)


@admin.register(AccessToken)
class AccessTokenAdmin(AuditedAdmin):
    list_display = [
        "id",
        "client",
        "tenant",
        "auth_method",
        "issued_at",
        "expires_at",
        "revoked_at",
    ]
    list_filter = ["auth_method", "tenant", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["id", "client__client_id", "tenant__slug"]
    readonly_fields = [
        "id",
        "client",
        "grant",
        "tenant",
        "scopes",
        "auth_method",
        "issued_at",
        "expires_at",
        "revoked_at",
    ]
    exclude = ["token_hash"]
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: AccessToken, form: Any, change: bool) -> None:
        """Every field is read-only: a token changes only by the revoke action."""

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[AccessToken]) -> None:
        for token in queryset.filter(revoked_at__isnull=True):
            services.token_revoke(token=token)
            self.log_change(request, token, "Revoked")
        self.message_user(request, "Revoked.", messages.SUCCESS)
