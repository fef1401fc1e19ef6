"""Reads for tenants, clients and grants."""

from django.conf import settings

from fhirplatform.errors import FhirError, IssueCode, not_found
from tenants.models import Tenant, TenantStatus


def tenant_fhir_base(tenant: Tenant) -> str:
    return f"{settings.PUBLIC_BASE_URL}/fhir/{tenant.slug}"


def token_endpoint_url() -> str:
    return f"{settings.PUBLIC_BASE_URL}/oauth/token"


def tenant_for_url(slug: str) -> Tenant:
    """The tenant a public (unauthenticated) FHIR URL names, or the shared 404."""
    tenant = Tenant.objects.select_related("plan").filter(slug=slug).first()
    if tenant is None:
        raise not_found()
    if tenant.status != TenantStatus.ACTIVE:
        raise FhirError(403, IssueCode.SUSPENDED, "The tenant is suspended")
    return tenant
