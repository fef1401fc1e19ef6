"""Access tokens: issuing, and resolving a bearer token to its caller.

Tokens are opaque random strings; only their SHA-256 is stored, so a database
leak yields no usable token. Every request re-reads the token with its client,
grant and tenant, so a revocation takes effect on the next request.
"""

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from fhirplatform.errors import FhirError, IssueCode, not_found
from tenants.models import (
    AccessToken,
    ApiClient,
    ClientStatus,
    Grant,
    GrantStatus,
    Tenant,
    TenantStatus,
)
from tenants.scopes import Scope, scopes_parse, scopes_text


@dataclass(frozen=True)
class Caller:
    """Who is calling: the trusted outcome of authentication, never of a header."""

    tenant: Tenant
    client: ApiClient
    grant: Grant
    scopes: list[Scope]
    token_id: str

    @property
    def actor(self) -> str:
        return self.client.client_id


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    expires_in: int
    scope: str
    tenant: Tenant


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_issue(*, grant: Grant, scopes: list[Scope], auth_method: str) -> IssuedToken:
    now = timezone.now()
    lifetime = settings.ACCESS_TOKEN_LIFETIME_SECONDS
    token = secrets.token_urlsafe(32)
    AccessToken.objects.create(
        token_hash=_token_hash(token),
        client=grant.client,
        grant=grant,
        tenant=grant.tenant,
        scopes=scopes_text(scopes),
        auth_method=auth_method,
        issued_at=now,
        expires_at=now + timedelta(seconds=lifetime),
    )
    return IssuedToken(
        access_token=token, expires_in=lifetime, scope=scopes_text(scopes), tenant=grant.tenant
    )


def _unauthorized(diagnostics: str, code: IssueCode = IssueCode.LOGIN) -> FhirError:
    return FhirError(
        401,
        code,
        diagnostics,
        headers={"WWW-Authenticate": 'Bearer realm="fhirplatform", error="invalid_token"'},
    )


def bearer_from_header(authorization: str | None) -> str:
    if not authorization:
        raise _unauthorized("Authorization: Bearer <access token> is required")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 512:
        raise _unauthorized("Authorization header must be 'Bearer <access token>'")
    return token


def token_authenticate(*, authorization: str | None, url_tenant_slug: str) -> Caller:
    """Resolve the bearer token and bind it to the URL's tenant.

    401 for a missing, unknown, expired or revoked token; 403 for a suspended
    tenant or revoked client or grant; the shared 404 when the token's tenant is
    not the tenant in the URL.
    """
    token = bearer_from_header(authorization)
    record = (
        AccessToken.objects.select_related("client", "grant", "tenant", "grant__plan", "tenant__plan")
        .filter(token_hash=_token_hash(token))
        .first()
    )
    if record is None:
        raise _unauthorized("The access token is not valid")
    if record.revoked_at is not None:
        raise _unauthorized("The access token has been revoked")
    if record.expires_at <= timezone.now():
        raise _unauthorized("The access token has expired", IssueCode.EXPIRED)
    if record.tenant.slug != url_tenant_slug:
        raise not_found()
    if record.client.status != ClientStatus.ACTIVE:
        raise FhirError(403, IssueCode.SUSPENDED, "The client has been revoked")
    if record.grant.status != GrantStatus.ACTIVE:
        raise FhirError(403, IssueCode.SUSPENDED, "The client's grant on this tenant is revoked")
    if record.tenant.status != TenantStatus.ACTIVE:
        raise FhirError(403, IssueCode.SUSPENDED, "The tenant is suspended")
    return Caller(
        tenant=record.tenant,
        client=record.client,
        grant=record.grant,
        scopes=scopes_parse(record.scopes),
        token_id=str(record.id),
    )
