"""Grants: which client may reach which tenant, with which scopes, purposes and plan."""

import logging

from django.db import transaction
from django.utils import timezone

from tenants.models import ApiClient, Grant, GrantStatus, RatePlan, Tenant
from tenants.scopes import ScopeError, scopes_parse, scopes_text
from tenants.services.base import UNCHANGED, ProvisioningError, Unchanged, fields_assign
from tenants.token_cache import callers_changed

logger = logging.getLogger(__name__)

DEFAULT_GRANT_PLAN = "standard"


def grant_scopes_clean(scopes: str) -> str:
    """The grant's scope string, normalised; a scope the platform does not serve is refused.

    Tokens never widen it: token requests are narrowed to these scopes."""
    try:
        return scopes_text(scopes_parse(scopes))
    except ScopeError as exc:
        raise ProvisioningError(str(exc)) from None


def grant_purposes_clean(purposes: object) -> list[str]:
    if not isinstance(purposes, list) or not all(
        isinstance(purpose, str) and purpose.strip() for purpose in purposes
    ):
        raise ProvisioningError("purposes must be a list of purpose-of-use codes")
    return [purpose.strip() for purpose in purposes]


def grant_create(
    *,
    client: ApiClient,
    tenant: Tenant,
    scopes: str,
    plan: RatePlan,
    purposes: list[str] | None = None,
) -> Grant:
    """Give a client access to a tenant; one grant per client and tenant."""
    scopes = grant_scopes_clean(scopes)
    cleaned_purposes = grant_purposes_clean(purposes or [])
    if Grant.objects.filter(client=client, tenant=tenant).exists():
        raise ProvisioningError(f"the client already has a grant on '{tenant.slug}'")
    grant = Grant.objects.create(
        client=client, tenant=tenant, scopes=scopes, purposes=cleaned_purposes, plan=plan
    )
    logger.info("grant created", extra={"client": client.client_id, "tenant": tenant.slug})
    return grant


def grant_revoke(*, grant: Grant) -> Grant:
    """Revoke a grant; tokens issued on it are refused (403) from the next request on,
    and stay refused after a re-activation (tokens issued before `deactivated_at`)."""
    grant.status = GrantStatus.REVOKED
    grant.deactivated_at = timezone.now()
    grant.save(update_fields=["status", "deactivated_at"])
    callers_changed()
    logger.info(
        "grant revoked", extra={"client": grant.client.client_id, "tenant": grant.tenant.slug}
    )
    return grant


def grant_activate(*, grant: Grant) -> Grant:
    """Re-activate a grant for tokens issued from now on; `deactivated_at` is kept."""
    grant.status = GrantStatus.ACTIVE
    grant.save(update_fields=["status"])
    callers_changed()
    logger.info(
        "grant re-activated",
        extra={"client": grant.client.client_id, "tenant": grant.tenant.slug},
    )
    return grant


def grant_update(
    *,
    grant: Grant,
    scopes: str | Unchanged = UNCHANGED,
    plan: RatePlan | Unchanged = UNCHANGED,
    purposes: list[str] | Unchanged = UNCHANGED,
    status: GrantStatus | Unchanged = UNCHANGED,
) -> Grant:
    """Change a grant's scopes, purposes, plan or status (through grant_revoke/grant_activate).

    Its client and tenant never change: revoke it and create another. Narrowed scopes
    apply at once: a token's scopes are those it was issued with, intersected on every
    request with what the grant holds now (tokens.token_check).
    """
    if scopes is not UNCHANGED:
        scopes = grant_scopes_clean(scopes)
    if purposes is not UNCHANGED:
        purposes = grant_purposes_clean(purposes)
    with transaction.atomic():
        changed = fields_assign(grant, scopes=scopes, plan=plan, purposes=purposes)
        if changed:
            grant.save(update_fields=changed)
            callers_changed()  # cached callers hold the grant (scopes, purposes, plan)
            logger.info(
                "grant changed",
                extra={
                    "client": grant.client.client_id,
                    "tenant": grant.tenant.slug,
                    "fields": changed,
                },
            )
        if status is not UNCHANGED and status != grant.status:
            if status == GrantStatus.REVOKED:
                grant_revoke(grant=grant)
            else:
                grant_activate(grant=grant)
    return grant
