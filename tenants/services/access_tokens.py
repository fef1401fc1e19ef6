"""Access tokens and credential hashes: issuing, revoking and purging tokens."""

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from tenants.models import AccessToken, Grant, Tenant
from tenants.scopes import Scope, scopes_text
from tenants.token_cache import callers_changed

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    expires_in: int
    scope: str
    tenant: Tenant
    purpose: str = ""


def credential_hash(credential: str) -> str:
    """What is stored of a client secret or an access token: never the credential itself."""
    # Both are 256-bit random strings, so a fast hash is as strong as a slow one.
    return hashlib.sha256(credential.encode()).hexdigest()


def token_issue(
    *,
    grant: Grant,
    scopes: list[Scope],
    auth_method: str,
    issued_at: datetime | None = None,
    purpose: str = "",
) -> IssuedToken:
    """Issue an opaque access token on a grant and return it once, in clear.

    The caller has already narrowed `scopes` to the grant (oauth.token_scopes_for_request)
    and may pass the time it began checking the grant as `issued_at`: a token is valid
    only if its client, grant and tenant were not deactivated after that. `purpose`: the
    purpose of use, already checked against the grant (oauth.token_purpose_for_request).
    """
    now = issued_at or timezone.now()
    lifetime = settings.ACCESS_TOKEN_LIFETIME_SECONDS
    token = secrets.token_urlsafe(32)
    AccessToken.objects.create(
        token_hash=credential_hash(token),
        client=grant.client,
        grant=grant,
        tenant=grant.tenant,
        scopes=scopes_text(scopes),
        auth_method=auth_method,
        purpose=purpose,
        issued_at=now,
        expires_at=now + timedelta(seconds=lifetime),
    )
    return IssuedToken(
        access_token=token,
        expires_in=lifetime,
        scope=scopes_text(scopes),
        tenant=grant.tenant,
        purpose=purpose,
    )


def token_revoke(*, token: AccessToken) -> AccessToken:
    """Revoke one access token; it is refused from the next request on."""
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        callers_changed()
        logger.info(
            "access token revoked",
            extra={
                "client": token.client.client_id,
                "tenant": token.tenant.slug,
                "token": str(token.id),
            },
        )
    return token


def tokens_purge_expired() -> int:
    """Delete access tokens that expired more than a day ago (the admin keeps recent ones)."""
    cutoff = timezone.now() - timedelta(days=1)
    deleted, _ = AccessToken.objects.filter(expires_at__lt=cutoff).delete()
    return deleted
