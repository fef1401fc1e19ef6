"""Reads for tenants, clients and grants."""

from django.conf import settings
from django.db.models import QuerySet

from fhirplatform.errors import not_found
from tenants.models import Tenant, TenantStatus


def fhir_base_url(tenant_slug: str) -> str:
    return f"{settings.PUBLIC_BASE_URL}/fhir/{tenant_slug}"


def tenant_fhir_base(tenant: Tenant) -> str:
    return fhir_base_url(tenant.slug)


def token_endpoint_url(tenant_slug: str | None = None) -> str:
    """The token endpoint: the shared one (the tenant named by `resource`), or a tenant's
    own, for SMART clients that name no tenant in their token request (docs/auth.md)."""
    if tenant_slug is None:
        return f"{settings.PUBLIC_BASE_URL}/oauth/token"
    return f"{settings.PUBLIC_BASE_URL}/oauth/{tenant_slug}/token"


def revocation_endpoint_url() -> str:
    return f"{settings.PUBLIC_BASE_URL}/oauth/revoke"


def tenants_with_schema() -> QuerySet[Tenant]:
    """Every tenant with a schema of its own (all but the public row), by slug: what the
    platform's sweeps over tenants (sealing, archiving, exports, cache overview) visit."""
    return Tenant.objects.exclude(schema_name="public").order_by("slug")


def tenant_for_url(slug: str) -> Tenant:
    """The active tenant a public (unauthenticated) FHIR URL names, or the shared 404.

    A suspended tenant gets that same 404, body and headers: an anonymous caller must not
    learn which tenants exist but are suspended (a 403 here told it).
    """
    tenant = Tenant.objects.select_related("plan").filter(slug=slug).first()
    if tenant is None or tenant.status != TenantStatus.ACTIVE:
        raise not_found()
    return tenant
