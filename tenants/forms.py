"""The operators' admin forms. Each field is checked by the same function the service
runs, so a bad value is a form error and changes nothing; saving is the services' job
(tenants/admin.py), never the form's."""

from collections.abc import Callable
from typing import Any

from django import forms
from django.forms.models import BaseInlineFormSet, InlineForeignKeyField

from tenants import services
from tenants.models import ApiClient, Grant, Tenant


def _checked(check: Callable[[], Any]) -> Any:
    """Run a service-side check; its refusal becomes the field's form error."""
    try:
        return check()
    except services.ProvisioningError as exc:
        raise forms.ValidationError(str(exc)) from None


def form_changes(form: forms.ModelForm) -> dict[str, Any]:
    """What the operator changed, by field name: the arguments of an update service."""
    return {name: form.cleaned_data[name] for name in form.changed_data}


class TenantForm(forms.ModelForm):
    class Meta:
        model = Tenant
        fields = [
            "slug",
            "name",
            "status",
            "isolation_tier",
            "data_region",
            "plan",
            "fhir_update_creates",
            "audit_retention_days",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Left out, the tenant keeps (or gets) the model's default retention.
        self.fields["audit_retention_days"].required = False

    def clean_audit_retention_days(self) -> int:
        days = self.cleaned_data.get("audit_retention_days")
        if days is None:
            days = self.instance.audit_retention_days
        return int(days)

    def clean_slug(self) -> str:
        slug: str = self.cleaned_data["slug"]
        if self.instance.pk is None:
            _checked(lambda: services.tenant_validate_slug(slug))
        elif slug != self.instance.slug:
            raise forms.ValidationError("A tenant's slug cannot change: it names its FHIR base.")
        return slug


def tenant_save(form: TenantForm) -> Tenant:
    """Create the tenant (row, domain, schema) or apply the operator's changes."""
    data = form.cleaned_data
    if form.instance.pk is None:
        tenant = services.tenant_create(
            slug=data["slug"],
            name=data["name"],
            plan_name=data["plan"].name,
            data_region=data["data_region"],
            isolation_tier=data["isolation_tier"],
        )
        return services.tenant_update(
            tenant=tenant,
            status=data["status"],
            fhir_update_creates=data["fhir_update_creates"],
            audit_retention_days=data["audit_retention_days"],
        )
    tenant = form.instance
    tenant.refresh_from_db()  # the form already wrote its values onto the instance
    return services.tenant_update(tenant=tenant, **form_changes(form))


class ApiClientForm(forms.ModelForm):
    # A URL typed without a scheme is read as https, the only scheme a JWKS URL may use.
    jwks_url = forms.URLField(
        required=False,
        max_length=500,
        assume_scheme="https",
        label="JWKS URL",
        help_text=ApiClient._meta.get_field("jwks_url").help_text,
    )

    class Meta:
        model = ApiClient
        # jwks_url before jwks: clean_jwks reads the cleaned URL.
        fields = ["name", "partner", "status", "plan", "jwks_url", "jwks"]

    def clean_jwks_url(self) -> str:
        return str(_checked(lambda: services.jwks_url_clean(self.cleaned_data["jwks_url"])))

    def clean_jwks(self) -> Any:
        jwks = self.cleaned_data["jwks"]
        jwks_url = self.cleaned_data.get("jwks_url", self.instance.jwks_url)
        _checked(
            lambda: services.client_jwks_validate(
                client=self.instance, jwks=jwks, jwks_url=jwks_url
            )
        )
        return jwks


def client_save(form: ApiClientForm) -> ApiClient:
    """Apply the operator's changes (clients are created by `create_client`)."""
    client = form.instance
    client.refresh_from_db()
    return services.client_update(client=client, **form_changes(form))


class GrantForm(forms.ModelForm):
    class Meta:
        model = Grant
        fields = ["client", "tenant", "scopes", "purposes", "plan", "status"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            # A grant is one client on one tenant: to move it, revoke it and grant anew.
            for name in ("client", "tenant"):
                field = self.fields.get(name)
                if field is not None and not isinstance(field, InlineForeignKeyField):
                    field.disabled = True

    def clean_scopes(self) -> str:
        return str(_checked(lambda: services.grant_scopes_clean(self.cleaned_data["scopes"])))

    def clean_purposes(self) -> list[str]:
        purposes = self.cleaned_data["purposes"]
        return list(
            _checked(lambda: services.grant_purposes_clean([] if purposes is None else purposes))
        )


def grant_save(form: GrantForm) -> Grant:
    """Create the grant or apply the operator's changes; status goes through
    grant_revoke / grant_activate either way."""
    data = form.cleaned_data
    if form.instance.pk is None:
        grant = services.grant_create(
            client=data["client"],
            tenant=data["tenant"],
            scopes=data["scopes"],
            plan=data["plan"],
            purposes=data["purposes"],
        )
        return services.grant_update(grant=grant, status=data["status"])
    grant = form.instance
    grant.refresh_from_db()
    return services.grant_update(grant=grant, **form_changes(form))


class GrantFormSet(BaseInlineFormSet):
    """Grants inline on a tenant or a client: rows are saved by the grant services."""

    def save_new(self, form: GrantForm, commit: bool = True) -> Grant:
        return grant_save(form)

    def save_existing(self, form: GrantForm, obj: Grant, commit: bool = True) -> Grant:
        return grant_save(form)
