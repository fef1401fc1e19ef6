"""Partners and their API clients: registration, status, secrets and public keys."""

import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from tenants.jwks_fetch import JwksUrlError, jwks_url_check
from tenants.models import ApiClient, ClientSecret, ClientStatus, Grant, Partner, RatePlan, Tenant
from tenants.services.access_tokens import credential_hash
from tenants.services.base import (
    UNCHANGED,
    ProvisioningError,
    Unchanged,
    fields_assign,
    name_clean,
)
from tenants.services.grants import DEFAULT_GRANT_PLAN, grant_create, grant_scopes_clean
from tenants.services.plans import rate_plan_get
from tenants.token_cache import callers_changed

logger = logging.getLogger(__name__)

_JWK_PUBLIC_FIELDS = {"RSA": {"n", "e"}, "EC": {"crv", "x", "y"}}
# A public JWK never carries these: a key that does is refused, registered or fetched.
JWK_PRIVATE_FIELDS = frozenset({"d", "p", "q", "dp", "dq", "qi"})


@dataclass(frozen=True)
class IssuedClient:
    client: ApiClient
    client_secret: str | None
    grants: list[Grant]


def _partner_slug_new(name: str) -> str:
    """A free slug for a new partner. It never changes afterwards, not even when the partner
    is renamed: patients' Consents name the partner by it."""
    base = (slugify(name) or "partner")[:50]
    slug, n = base, 1
    while Partner.objects.filter(slug=slug).exists():
        n += 1
        slug = f"{base}-{n}"
    return slug


def partner_get_or_create(*, name: str) -> Partner:
    name = name_clean(name, what="partner name")
    partner = Partner.objects.filter(name=name).first()
    if partner is None:
        partner = Partner.objects.create(name=name, slug=_partner_slug_new(name))
    return partner


def _email_clean(email: str) -> str:
    email = email.strip()
    if email:
        try:
            validate_email(email)
        except ValidationError:
            raise ProvisioningError(f"'{email}' is not an email address") from None
    return email


def partner_create(*, name: str, contact_email: str = "", members: Iterable[User] = ()) -> Partner:
    name = name_clean(name, what="partner name")
    if Partner.objects.filter(name=name).exists():
        raise ProvisioningError(f"partner '{name}' already exists")
    with transaction.atomic():
        partner = Partner.objects.create(
            name=name, slug=_partner_slug_new(name), contact_email=_email_clean(contact_email)
        )
        partner.members.set(list(members))
    logger.info("partner created", extra={"partner": name})
    return partner


def partner_update(
    *,
    partner: Partner,
    name: str | Unchanged = UNCHANGED,
    contact_email: str | Unchanged = UNCHANGED,
    members: Iterable[User] | Unchanged = UNCHANGED,
) -> Partner:
    """Rename a partner, change its contact or its members (the users of its portal)."""
    if name is not UNCHANGED:
        name = name_clean(name, what="partner name")
    if contact_email is not UNCHANGED:
        contact_email = _email_clean(contact_email)
    with transaction.atomic():
        changed = fields_assign(partner, name=name, contact_email=contact_email)
        if changed:
            partner.save(update_fields=changed)
        if members is not UNCHANGED:
            partner.members.set(list(members))
            changed.append("members")
    logger.info("partner changed", extra={"partner": partner.name, "fields": changed})
    return partner


def partner_member_add(*, partner: Partner, user: User) -> Partner:
    partner.members.add(user)
    logger.info("partner member added", extra={"partner": partner.name, "user": user.pk})
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
        if JWK_PRIVATE_FIELDS & key.keys():
            raise ProvisioningError(f"JWKS key {index} contains private key material")
        if not key.get("kid"):
            raise ProvisioningError(f"JWKS key {index}: 'kid' is required")
    return jwks


def jwks_url_clean(url: str) -> str:
    """A JWKS URL a client may register ('' for none): see jwks_fetch.jwks_url_check."""
    url = url.strip()
    if not url:
        return ""
    try:
        return jwks_url_check(url)
    except JwksUrlError as exc:
        raise ProvisioningError(str(exc)) from None


def client_jwks_validate(
    *, client: ApiClient, jwks: Any, jwks_url: str | Unchanged = UNCHANGED
) -> None:
    """A client's new key set: public keys only, and a client with no secret keeps a way
    to authenticate (registered keys or a JWKS URL; the client's own URL when unchanged)."""
    url = client.jwks_url if jwks_url is UNCHANGED else jwks_url
    if jwks is not None:
        jwks_validate(jwks)
    elif not url and not client.secrets.exists():
        raise ProvisioningError("a client needs a secret or a JWKS (registered keys or a JWKS URL)")


def client_create(
    *,
    partner_name: str,
    tenant_slugs: list[str],
    scopes: str,
    plan_name: str = DEFAULT_GRANT_PLAN,
    purposes: list[str] | None = None,
    jwks: dict[str, Any] | None = None,
    jwks_url: str = "",
    name: str = "",
    with_secret: bool = True,
) -> IssuedClient:
    """Register a client with a grant on each tenant. Returns the secret once, in clear.

    A key-only client (no secret) needs registered keys (`jwks`) or a JWKS URL."""
    if not tenant_slugs:
        raise ProvisioningError("at least one --tenant is required")
    scopes = grant_scopes_clean(scopes)
    tenants = list(Tenant.objects.filter(slug__in=tenant_slugs))
    unknown = sorted(set(tenant_slugs) - {tenant.slug for tenant in tenants})
    if unknown:
        raise ProvisioningError(f"unknown tenant(s): {', '.join(unknown)}")
    plan = rate_plan_get(name=plan_name)
    if jwks is not None:
        jwks_validate(jwks)
    jwks_url = jwks_url_clean(jwks_url)
    if jwks is None and not jwks_url and not with_secret:
        raise ProvisioningError("a client needs a secret or a JWKS (registered keys or a JWKS URL)")

    client_secret = secrets.token_urlsafe(32) if with_secret else None
    with transaction.atomic():
        partner = partner_get_or_create(name=partner_name)
        client = ApiClient.objects.create(
            client_id=secrets.token_hex(16),
            name=name.strip() or f"{partner.name} client",
            partner=partner,
            jwks=jwks,
            jwks_url=jwks_url,
        )
        if client_secret:
            ClientSecret.objects.create(
                client=client, secret_hash=credential_hash(client_secret), hint=client_secret[-4:]
            )
        grants = [
            grant_create(client=client, tenant=tenant, scopes=scopes, purposes=purposes, plan=plan)
            for tenant in sorted(tenants, key=lambda t: t.slug)
        ]
    logger.info("client created", extra={"client": client.client_id, "tenants": tenant_slugs})
    return IssuedClient(client=client, client_secret=client_secret, grants=grants)


def client_revoke(*, client: ApiClient) -> ApiClient:
    """Revoke a client; every token it holds stops working on the next request, and
    stays refused after a re-activation (tokens issued before `deactivated_at`)."""
    now = timezone.now()
    client.status = ClientStatus.REVOKED
    client.revoked_at = now
    client.deactivated_at = now
    client.save(update_fields=["status", "revoked_at", "deactivated_at"])
    callers_changed()
    logger.info("client revoked", extra={"client": client.client_id})
    return client


def client_activate(*, client: ApiClient) -> ApiClient:
    """Re-activate a client for tokens issued from now on; `deactivated_at` is kept."""
    client.status = ClientStatus.ACTIVE
    client.revoked_at = None
    client.save(update_fields=["status", "revoked_at"])
    callers_changed()
    logger.info("client re-activated", extra={"client": client.client_id})
    return client


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
            client=client, secret_hash=credential_hash(new_secret), hint=new_secret[-4:]
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
    client_jwks_validate(client=client, jwks=jwks)
    client.jwks = jwks
    client.save(update_fields=["jwks"])
    kids = [key.get("kid") for key in (jwks or {}).get("keys", [])]
    logger.info("client keys set", extra={"client": client.client_id, "kids": kids})
    return client


def client_update(
    *,
    client: ApiClient,
    name: str | Unchanged = UNCHANGED,
    partner: Partner | Unchanged = UNCHANGED,
    plan: RatePlan | Unchanged | None = UNCHANGED,
    jwks: dict[str, Any] | Unchanged | None = UNCHANGED,
    jwks_url: str | Unchanged = UNCHANGED,
    status: ClientStatus | Unchanged = UNCHANGED,
) -> ApiClient:
    """Change a client's name, partner, client-wide plan or JWKS URL; its keys go through
    client_jwks_set and its status through client_revoke / client_activate."""
    # Every check before the first change, so a refusal leaves the instance as it was too.
    if name is not UNCHANGED:
        name = name_clean(name, what="name")
    if jwks_url is not UNCHANGED:
        jwks_url = jwks_url_clean(jwks_url)
    if jwks is not UNCHANGED or jwks_url is not UNCHANGED:
        client_jwks_validate(
            client=client, jwks=client.jwks if jwks is UNCHANGED else jwks, jwks_url=jwks_url
        )
    with transaction.atomic():
        changed = fields_assign(client, name=name, partner=partner, plan=plan, jwks_url=jwks_url)
        if changed:
            client.save(update_fields=changed)
            callers_changed()  # cached callers hold the client (its plan)
            logger.info("client changed", extra={"client": client.client_id, "fields": changed})
        if jwks is not UNCHANGED and jwks != client.jwks:
            client_jwks_set(client=client, jwks=jwks)
        if status is not UNCHANGED and status != client.status:
            if status == ClientStatus.REVOKED:
                client_revoke(client=client)
            else:
                client_activate(client=client)
    return client
