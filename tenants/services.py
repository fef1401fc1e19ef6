"""Writes for tenants, partners, API clients and grants."""

import hashlib
import logging
import re
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from tenants.models import (
    AccessToken,
    ApiClient,
    ClientSecret,
    ClientStatus,
    DataRegion,
    Domain,
    Grant,
    GrantStatus,
    IsolationTier,
    Partner,
    RatePlan,
    Tenant,
    TenantStatus,
)
from tenants.scopes import ScopeError, scopes_parse, scopes_text

logger = logging.getLogger(__name__)

DEFAULT_TENANT_PLAN = "standard"
DEFAULT_GRANT_PLAN = "standard"
_SLUG_PATTERN = re.compile(r"^[a-z][a-z0-9-]{1,38}[a-z0-9]$")
_RESERVED_SLUGS = {"public", "admin", "portal", "metadata", "static", "oauth", "fhir", "www"}
_JWK_PUBLIC_FIELDS = {"RSA": {"n", "e"}, "EC": {"crv", "x", "y"}}
_JWK_PRIVATE_FIELDS = {"d", "p", "q", "dp", "dq", "qi"}


class ProvisioningError(ValueError):
    """Bad input to a provisioning service; nothing was changed."""


@dataclass(frozen=True)
class IssuedClient:
    client: ApiClient
    client_secret: str | None
    grants: list[Grant]


def schema_name_for(slug: str) -> str:
    return "t_" + slug.replace("-", "_")


def secret_hash(secret: str) -> str:
    # Secrets are 256-bit random strings, so a fast hash is as strong as a slow one.
    return hashlib.sha256(secret.encode()).hexdigest()


def rate_plan_get(*, name: str) -> RatePlan:
    try:
        return RatePlan.objects.get(name=name)
    except RatePlan.DoesNotExist:
        known = ", ".join(RatePlan.objects.values_list("name", flat=True))
        raise ProvisioningError(f"unknown plan '{name}' (known: {known})") from None


def rate_plan_count_only(*, name: str, description: str) -> RatePlan:
    """A dry-run plan with limits far above any real load: every request is counted
    (RateLimit headers, metrics, throttle events) and none is refused. For load tests
    and test tenants, where the pipeline is measured rather than the plan."""
    plan, _ = RatePlan.objects.get_or_create(
        name=name,
        defaults=dict(
            description=description,
            read_per_minute=1_000_000,
            search_per_minute=1_000_000,
            write_per_minute=1_000_000,
            history_per_minute=1_000_000,
            batch_per_minute=1_000_000,
            export_per_hour=1_000,
            export_poll_per_minute=1_000,
            concurrency=10_000,
            daily_quota=2_000_000_000,
            dry_run=True,
        ),
    )
    return plan


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
    if not name.strip():
        raise ProvisioningError("name must not be empty")
    if data_region not in DataRegion.values:
        raise ProvisioningError(f"unknown data region '{data_region}'")
    plan = rate_plan_get(name=plan_name)
    started = time.perf_counter()
    with transaction.atomic():
        tenant = Tenant.objects.create(
            schema_name=schema_name_for(slug),
            slug=slug,
            name=name.strip(),
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


def tenant_set_status(*, tenant: Tenant, status: TenantStatus) -> Tenant:
    tenant.status = status
    tenant.save(update_fields=["status"])
    logger.info("tenant status changed", extra={"tenant": tenant.slug, "status": status})
    return tenant


def partner_get_or_create(*, name: str) -> Partner:
    if not name.strip():
        raise ProvisioningError("partner name must not be empty")
    partner, _ = Partner.objects.get_or_create(name=name.strip())
    return partner


def jwks_validate(jwks: Any) -> dict[str, Any]:
    """Accept a JWKS document of public RSA/EC keys; refuse private key material."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise ProvisioningError("JWKS must be an object with a non-empty 'keys' list")
    for index, key in enumerate(jwks["keys"]):
        if not isinstance(key, dict):
            raise ProvisioningError(f"JWKS key {index} is not an object")
        required = _JWK_PUBLIC_FIELDS.get(key.get("kty", ""))
        if required is None:
            raise ProvisioningError(f"JWKS key {index}: kty must be RSA or EC")
        missing = required - key.keys()
        if missing:
            raise ProvisioningError(f"JWKS key {index}: missing {', '.join(sorted(missing))}")
        if _JWK_PRIVATE_FIELDS & key.keys():
            raise ProvisioningError(f"JWKS key {index} contains private key material")
        if not key.get("kid"):
            raise ProvisioningError(f"JWKS key {index}: 'kid' is required")
    return jwks


def client_create(
    *,
    partner_name: str,
    tenant_slugs: list[str],
    scopes: str,
    plan_name: str = DEFAULT_GRANT_PLAN,
    purposes: list[str] | None = None,
    jwks: dict[str, Any] | None = None,
    name: str = "",
    with_secret: bool = True,
) -> IssuedClient:
    """Register a client with a grant on each tenant. Returns the secret once, in clear."""
    if not tenant_slugs:
        raise ProvisioningError("at least one --tenant is required")
    try:
        parsed_scopes = scopes_parse(scopes)
    except ScopeError as exc:
        raise ProvisioningError(str(exc)) from None
    tenants = list(Tenant.objects.filter(slug__in=tenant_slugs))
    unknown = sorted(set(tenant_slugs) - {tenant.slug for tenant in tenants})
    if unknown:
        raise ProvisioningError(f"unknown tenant(s): {', '.join(unknown)}")
    plan = rate_plan_get(name=plan_name)
    if jwks is not None:
        jwks_validate(jwks)
    if jwks is None and not with_secret:
        raise ProvisioningError("a client needs a secret or a JWKS")

    client_secret = secrets.token_urlsafe(32) if with_secret else None
    with transaction.atomic():
        partner = partner_get_or_create(name=partner_name)
        client = ApiClient.objects.create(
            client_id=secrets.token_hex(16),
            name=name.strip() or f"{partner.name} client",
            partner=partner,
            jwks=jwks,
        )
        if client_secret:
            ClientSecret.objects.create(
                client=client, secret_hash=secret_hash(client_secret), hint=client_secret[-4:]
            )
        grants = [
            Grant.objects.create(
                client=client,
                tenant=tenant,
                scopes=scopes_text(parsed_scopes),
                purposes=purposes or [],
                plan=plan,
            )
            for tenant in sorted(tenants, key=lambda t: t.slug)
        ]
    logger.info("client created", extra={"client": client.client_id, "tenants": tenant_slugs})
    return IssuedClient(client=client, client_secret=client_secret, grants=grants)


def client_revoke(*, client: ApiClient) -> ApiClient:
    """Revoke a client; every token it holds stops working on the next request."""
    client.status = ClientStatus.REVOKED
    client.revoked_at = timezone.now()
    client.save(update_fields=["status", "revoked_at"])
    logger.info("client revoked", extra={"client": client.client_id})
    return client


def client_activate(*, client: ApiClient) -> ApiClient:
    client.status = ClientStatus.ACTIVE
    client.revoked_at = None
    client.save(update_fields=["status", "revoked_at"])
    return client


def grant_revoke(*, grant: Grant) -> Grant:
    grant.status = GrantStatus.REVOKED
    grant.save(update_fields=["status"])
    logger.info(
        "grant revoked", extra={"client": grant.client.client_id, "tenant": grant.tenant.slug}
    )
    return grant


def tokens_purge_expired() -> int:
    """Delete access tokens that expired more than a day ago (the admin keeps recent ones)."""
    cutoff = timezone.now() - timedelta(days=1)
    deleted, _ = AccessToken.objects.filter(expires_at__lt=cutoff).delete()
    return deleted


# --- Credential rotation and token revocation -----------------------------------------


def client_secret_rotate(*, client: ApiClient) -> str:
    """Issue a new secret and return it once, in clear.

    Secrets that were live stay valid for CLIENT_SECRET_ROTATION_GRACE_SECONDS, so
    a partner can roll the new one out without downtime; an earlier, shorter
    expiry is never extended.
    """
    now = timezone.now()
    grace_end = now + timedelta(seconds=settings.CLIENT_SECRET_ROTATION_GRACE_SECONDS)
    new_secret = secrets.token_urlsafe(32)
    with transaction.atomic():
        live = ClientSecret.objects.select_for_update().filter(client=client)
        live.filter(expires_at__isnull=True).update(expires_at=grace_end)
        live.filter(expires_at__gt=grace_end).update(expires_at=grace_end)
        ClientSecret.objects.create(
            client=client, secret_hash=secret_hash(new_secret), hint=new_secret[-4:]
        )
    logger.info(
        "client secret rotated",
        extra={
            "client": client.client_id,
            "grace_seconds": settings.CLIENT_SECRET_ROTATION_GRACE_SECONDS,
        },
    )
    return new_secret


def client_jwks_set(*, client: ApiClient, jwks: dict[str, Any] | None) -> ApiClient:
    """Replace the client's registered public keys (key rotation for private_key_jwt).

    Assertions signed with a key that is no longer in the set fail from the next
    request; to rotate without downtime, register old and new keys together first.
    """
    if jwks is not None:
        jwks_validate(jwks)
    elif not client.secrets.exists():
        raise ProvisioningError("a client needs a secret or a JWKS")
    client.jwks = jwks
    client.save(update_fields=["jwks"])
    kids = [key.get("kid") for key in (jwks or {}).get("keys", [])]
    logger.info("client keys set", extra={"client": client.client_id, "kids": kids})
    return client


def token_revoke(*, token: AccessToken) -> AccessToken:
    """Revoke one access token; it is refused from the next request on."""
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        logger.info(
            "access token revoked",
            extra={
                "client": token.client.client_id,
                "tenant": token.tenant.slug,
                "token": str(token.id),
            },
        )
    return token
