"""Tenants: provisioning (row, domain and migrated schema together), status and placement."""

import logging
import re
import time

from django.db import connection, transaction
from django.utils import timezone

from tenants.models import DataRegion, Domain, IsolationTier, RatePlan, Tenant, TenantStatus
from tenants.services.base import (
    UNCHANGED,
    ProvisioningError,
    Unchanged,
    fields_assign,
    name_clean,
)
from tenants.services.plans import rate_plan_get
from tenants.token_cache import callers_changed

logger = logging.getLogger(__name__)

DEFAULT_TENANT_PLAN = "standard"
_SLUG_PATTERN = re.compile(r"^[a-z][a-z0-9-]{1,38}[a-z0-9]$")
_RESERVED_SLUGS = {"public", "admin", "portal", "metadata", "static", "oauth", "fhir", "www"}


def schema_name_for(slug: str) -> str:
    return "t_" + slug.replace("-", "_")


def tenant_validate_slug(slug: str) -> None:
    if not _SLUG_PATTERN.match(slug):
        raise ProvisioningError(
            f"invalid slug '{slug}': 3-40 characters, lowercase letters, digits and '-', "
            "starting with a letter"
        )
    if slug in _RESERVED_SLUGS:
        raise ProvisioningError(f"slug '{slug}' is reserved")
    if Tenant.objects.filter(slug=slug).exists():
        raise ProvisioningError(f"tenant '{slug}' already exists")


def _placement_validate(*, data_region: str | Unchanged, isolation_tier: str | Unchanged) -> None:
    if data_region is not UNCHANGED and data_region not in DataRegion.values:
        raise ProvisioningError(f"unknown data region '{data_region}'")
    if isolation_tier is not UNCHANGED and isolation_tier not in IsolationTier.values:
        raise ProvisioningError(f"unknown isolation tier '{isolation_tier}'")


def tenant_create(
    *,
    slug: str,
    name: str,
    plan_name: str = DEFAULT_TENANT_PLAN,
    data_region: str = DataRegion.US_EAST,
    isolation_tier: str = IsolationTier.SCHEMA,
) -> Tenant:
    """Create a tenant and its migrated schema. On any failure nothing remains."""
    tenant_validate_slug(slug)
    name = name_clean(name, what="name")
    _placement_validate(data_region=data_region, isolation_tier=isolation_tier)
    plan = rate_plan_get(name=plan_name)
    started = time.perf_counter()
    with transaction.atomic():
        tenant = Tenant.objects.create(
            schema_name=schema_name_for(slug),
            slug=slug,
            name=name,
            plan=plan,
            data_region=data_region,
            isolation_tier=isolation_tier,
        )
        Domain.objects.create(domain=slug, tenant=tenant, is_primary=True)
    try:
        tenant.create_schema(check_if_exists=True, verbosity=0)
    except Exception:
        _tenant_drop(tenant)
        raise
    logger.info(
        "tenant created",
        extra={"tenant": slug, "seconds": round(time.perf_counter() - started, 3)},
    )
    return tenant


def _tenant_drop(tenant: Tenant) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f'DROP SCHEMA IF EXISTS "{tenant.schema_name}" CASCADE')
    Domain.objects.filter(tenant=tenant).delete()
    Tenant.objects.filter(pk=tenant.pk).delete()
    callers_changed()


def tenant_set_status(*, tenant: Tenant, status: TenantStatus) -> Tenant:
    """Suspend or re-activate a tenant; its callers' tokens are refused (403) from the
    next request on while it is suspended, and tokens issued before a suspension stay
    refused after the re-activation (`deactivated_at` is kept)."""
    tenant.status = status
    fields = ["status"]
    if status != TenantStatus.ACTIVE:
        tenant.deactivated_at = timezone.now()
        fields.append("deactivated_at")
    tenant.save(update_fields=fields)
    callers_changed()
    logger.info("tenant status changed", extra={"tenant": tenant.slug, "status": status})
    return tenant


def tenant_update(
    *,
    tenant: Tenant,
    name: str | Unchanged = UNCHANGED,
    plan: RatePlan | Unchanged = UNCHANGED,
    data_region: str | Unchanged = UNCHANGED,
    isolation_tier: str | Unchanged = UNCHANGED,
    status: TenantStatus | Unchanged = UNCHANGED,
    fhir_update_creates: bool | Unchanged = UNCHANGED,
    audit_retention_days: int | Unchanged = UNCHANGED,
) -> Tenant:
    """Change a tenant's editable fields; a status change goes through tenant_set_status.

    The slug and schema never change: they name the FHIR base and hold the data.
    """
    if name is not UNCHANGED:
        name = name_clean(name, what="name")
    _placement_validate(data_region=data_region, isolation_tier=isolation_tier)
    if audit_retention_days is not UNCHANGED and audit_retention_days < 1:
        raise ProvisioningError("audit retention is at least one day")
    with transaction.atomic():
        changed = fields_assign(
            tenant,
            name=name,
            plan=plan,
            data_region=data_region,
            isolation_tier=isolation_tier,
            fhir_update_creates=fhir_update_creates,
            audit_retention_days=audit_retention_days,
        )
        if changed:
            tenant.save(update_fields=changed)
            callers_changed()  # cached callers hold the tenant (its plan and switches)
            logger.info("tenant changed", extra={"tenant": tenant.slug, "fields": changed})
        if status is not UNCHANGED and status != tenant.status:
            tenant_set_status(tenant=tenant, status=status)
    return tenant
