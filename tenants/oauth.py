"""The OAuth token endpoint's logic: client authentication, the grant and scopes a
token request gets, and issuing through services.token_issue.

The HTTP side (form parsing, rate limits, rendering refusals) is tenants/api.py;
private_key_jwt assertions are verified in tenants/assertions.py.
"""

import base64
import binascii
import hmac
import logging
import re
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import unquote_plus

from django.db.models import Q
from django.utils import timezone

from tenants.models import (
    AccessToken,
    ApiClient,
    ClientSecret,
    ClientStatus,
    Grant,
    GrantStatus,
    TenantStatus,
)
from tenants.scopes import Scope, ScopeError, scopes_intersect, scopes_parse
from tenants.selectors import tenant_fhir_base
from tenants.services import IssuedToken, credential_hash, token_issue

logger = logging.getLogger(__name__)

CLIENT_ASSERTION_TYPE_JWT = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
GRANT_TYPE_CLIENT_CREDENTIALS = "client_credentials"
MAX_CLIENT_ID_LENGTH = 64


class AuthMethod(StrEnum):
    """Token endpoint client authentication methods (RFC 7591 names)."""

    CLIENT_SECRET_BASIC = "client_secret_basic"  # noqa: S105 (a method name, not a secret)
    PRIVATE_KEY_JWT = "private_key_jwt"


class OAuthErrorCode(StrEnum):
    """RFC 6749 section 5.2 error codes, plus RFC 8707 invalid_target."""

    INVALID_REQUEST = "invalid_request"
    INVALID_CLIENT = "invalid_client"
    INVALID_GRANT = "invalid_grant"
    UNAUTHORIZED_CLIENT = "unauthorized_client"
    UNSUPPORTED_GRANT_TYPE = "unsupported_grant_type"
    INVALID_SCOPE = "invalid_scope"
    INVALID_TARGET = "invalid_target"


_OAUTH_STATUS = {OAuthErrorCode.INVALID_CLIENT: 401}


class OAuthError(Exception):
    """A refusal at the token endpoint, rendered as an RFC 6749 JSON error body."""

    def __init__(self, error: OAuthErrorCode, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description

    @property
    def status(self) -> int:
        return _OAUTH_STATUS.get(self.error, 400)

    def body(self) -> dict[str, str]:
        return {"error": str(self.error), "error_description": self.description}


class TokenLimitReason(StrEnum):
    """Which token endpoint limit refused a request (issue.details.coding of the 429)."""

    CLIENT = "token-client"
    IP = "token-ip"


class TokenServiceUnavailable(Exception):
    """A dependency the token endpoint needs to stay safe (Redis) is unreachable."""


@dataclass(frozen=True)
class ClientCredentials:
    """What a token request presented, before anything was verified."""

    method: AuthMethod
    client_id: str
    secret: str = field(default="", repr=False)
    assertion: str = field(default="", repr=False)


# RFC 6749 Appendix A: client ids, secrets, scopes and the other parameters are VSCHAR.
_VSCHAR = re.compile(r"[\x20-\x7e]*")


def oauth_text_check(
    value: str, *, what: str, error: OAuthErrorCode = OAuthErrorCode.INVALID_REQUEST
) -> str:
    """The one rule for text the token endpoint reads: printable ASCII only.

    NUL, control characters, non-ASCII and undecodable bytes (decoded as U+FFFD) are
    refused here, before they reach a query or a hash that cannot take them."""
    if not _VSCHAR.fullmatch(value):
        raise OAuthError(error, f"{what} must be printable ASCII")
    return value


def _invalid_client() -> OAuthError:
    # One answer for unknown client, wrong secret and revoked client: no client id probing.
    return OAuthError(OAuthErrorCode.INVALID_CLIENT, "Client authentication failed")


def basic_credentials_parse(authorization: str) -> tuple[str, str]:
    """client_id and secret from `Basic base64(urlencode(id):urlencode(secret))` (RFC 6749)."""
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        raise OAuthError(OAuthErrorCode.INVALID_REQUEST, "Authorization header must be HTTP Basic")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):  # ValueError: non-ASCII header, undecodable bytes
        raise OAuthError(
            OAuthErrorCode.INVALID_REQUEST, "Authorization header is not valid base64"
        ) from None
    client_id, separator, secret = decoded.partition(":")
    if not separator or not client_id or not secret:
        raise OAuthError(
            OAuthErrorCode.INVALID_REQUEST, "Basic credentials must be client_id:client_secret"
        )
    return (
        oauth_text_check(unquote_plus(client_id), what="The Basic client_id"),
        oauth_text_check(unquote_plus(secret), what="The Basic client_secret"),
    )


def client_authenticate_secret(*, client_id: str, secret: str) -> ApiClient:
    """The active client whose current (or still-in-grace) secret this is, else invalid_client."""
    client = ApiClient.objects.filter(client_id=client_id[:MAX_CLIENT_ID_LENGTH]).first()
    candidate = credential_hash(secret)
    matched = False
    if client is not None:
        live = ClientSecret.objects.filter(client=client).filter(
            Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now())
        )
        for stored in live.values_list("secret_hash", flat=True):
            # Compare against every live secret so timing does not reveal which one matched.
            matched |= hmac.compare_digest(stored, candidate)
    if client is None or not matched or client.status != ClientStatus.ACTIVE:
        raise _invalid_client()
    return client


def grant_for_token_request(*, client: ApiClient, resource: str) -> Grant:
    """The grant a token request targets.

    `resource` (RFC 8707) or `aud` names the tenant's FHIR base URL. When the
    client sends neither and holds exactly one active grant, that grant is used.
    A base the client has no grant on, and an unknown base, get the same answer.
    """
    grants = list(
        Grant.objects.select_related("tenant", "plan", "client")
        .filter(client=client)
        .order_by("tenant__slug")
    )
    if not resource:
        active = [grant for grant in grants if grant.status == GrantStatus.ACTIVE]
        if len(active) == 1:
            grant = active[0]
        elif not active:
            raise OAuthError(OAuthErrorCode.INVALID_GRANT, "The client has no active grant")
        else:
            raise OAuthError(
                OAuthErrorCode.INVALID_REQUEST,
                "The client has grants on several tenants: send resource=<FHIR base URL>",
            )
    else:
        wanted = resource.rstrip("/")
        matching = [grant for grant in grants if tenant_fhir_base(grant.tenant) == wanted]
        if not matching:
            raise OAuthError(
                OAuthErrorCode.INVALID_TARGET, "The client has no grant on that FHIR base"
            )
        grant = matching[0]
    if grant.status != GrantStatus.ACTIVE:
        raise OAuthError(
            OAuthErrorCode.INVALID_GRANT, "The client's grant on that tenant is revoked"
        )
    if grant.tenant.status != TenantStatus.ACTIVE:
        raise OAuthError(OAuthErrorCode.INVALID_GRANT, "The tenant is suspended")
    return grant


def token_scopes_for_request(*, grant: Grant, scope: str) -> list[Scope]:
    """The requested scopes narrowed to the grant: each in SMART v2 form, in the order
    requested, duplicates dropped (the `scope` of the token response, docs/auth.md).

    SMART Backend Services requires `scope`: a request without one, or with an empty one,
    is refused rather than handed everything the grant holds."""
    if not scope.strip():
        raise OAuthError(
            OAuthErrorCode.INVALID_SCOPE,
            "scope is required: name the scopes the token needs, e.g. scope=system/Patient.rs",
        )
    granted = scopes_parse(grant.scopes)
    try:
        requested = scopes_parse(scope)
    except ScopeError as exc:
        raise OAuthError(OAuthErrorCode.INVALID_SCOPE, str(exc)) from None
    narrowed = scopes_intersect(requested, granted)
    if not narrowed:
        raise OAuthError(
            OAuthErrorCode.INVALID_SCOPE, "None of the requested scopes is granted to this client"
        )
    return narrowed


def token_purpose_for_request(*, grant: Grant, purpose: str) -> str:
    """The purpose of use a token is issued for: the requested one when the grant holds it,
    else, with none requested, the first the grant lists (its default); blank when the
    grant names none. The tenant's consent policy decides what a purpose may see."""
    if not purpose:
        return grant.purposes[0] if grant.purposes else ""
    if purpose not in grant.purposes:
        raise OAuthError(
            OAuthErrorCode.INVALID_REQUEST,
            f"purpose_of_use '{purpose}' is not granted to this client; granted: "
            f"{', '.join(grant.purposes) or '(none)'}",
        )
    return purpose


def token_request_issue(
    *, client: ApiClient, auth_method: AuthMethod, resource: str, scope: str, purpose: str = ""
) -> IssuedToken:
    """Issue an access token for an authenticated client: pick the grant, narrow the scopes,
    settle the purpose of use."""
    # Stamped before the status checks below: a revocation that lands while they run
    # is later than the token, so the token dies with it (tokens.token_check).
    issued_at = timezone.now()
    grant = grant_for_token_request(client=client, resource=resource)
    scopes = token_scopes_for_request(grant=grant, scope=scope)
    purpose = token_purpose_for_request(grant=grant, purpose=purpose)
    issued = token_issue(
        grant=grant, scopes=scopes, auth_method=auth_method, issued_at=issued_at, purpose=purpose
    )
    logger.info(
        "token issued",
        extra={
            "client": client.client_id,
            "tenant": grant.tenant.slug,
            "auth_method": str(auth_method),
            "scope": issued.scope,
            "purpose": purpose,
        },
    )
    return issued


def token_for_client(*, client: ApiClient, token: str) -> AccessToken | None:
    """The client's own token record (for RFC 7009 revocation), or None."""
    return AccessToken.objects.filter(client=client, token_hash=credential_hash(token)).first()
