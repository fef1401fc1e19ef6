"""Bearer-token checks: resolving an access token on a FHIR request to its caller.

Tokens are opaque random strings; only their hash is stored (see
services.credential_hash), so a database leak yields no usable token. A token that
passed its checks is kept in token_cache.py, checked again on every request against the
caller generation its admission reads, so a revocation takes effect on the next request,
a re-activation never revives a token issued before the revocation, and a narrowed grant
narrows its live tokens at once. Issuing lives in services.token_issue and the token
endpoint in oauth.py.
"""

from dataclasses import dataclass

from django.utils import timezone

from fhirplatform.errors import FhirError, IssueCode, NotFound
from tenants.models import (
    AccessToken,
    ApiClient,
    ClientStatus,
    Grant,
    GrantStatus,
    Tenant,
    TenantStatus,
)
from tenants.scopes import Scope, scopes_intersect, scopes_parse
from tenants.services import credential_hash
from tenants.token_cache import entry_make, token_cache

MAX_BEARER_LENGTH = 512


@dataclass(frozen=True)
class Caller:
    """Who is calling: the trusted outcome of authentication, never of a header."""

    tenant: Tenant
    client: ApiClient
    grant: Grant
    scopes: list[Scope]
    token_id: str
    # The token's purpose of use while its grant still holds it (None: no purpose), and the
    # client's partner as Consents name it: what the consent decision needs of the caller.
    purpose: str | None = None
    partner_slug: str = ""


def _unauthorized(
    diagnostics: str, code: IssueCode = IssueCode.LOGIN, bearer_error: str | None = "invalid_token"
) -> FhirError:
    # RFC 6750 3.1: a request with no credentials gets the challenge without an error code.
    challenge = 'Bearer realm="fhirplatform"'
    if bearer_error:
        challenge += f', error="{bearer_error}"'
    return FhirError(401, code, diagnostics, headers={"WWW-Authenticate": challenge})


def bearer_from_header(authorization: str | None) -> str:
    if not authorization:
        raise _unauthorized("Authorization: Bearer <access token> is required", bearer_error=None)
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_BEARER_LENGTH:
        raise _unauthorized(
            "Authorization header must be 'Bearer <access token>'", bearer_error="invalid_request"
        )
    return token


def caller_of(
    *,
    tenant: Tenant,
    client: ApiClient,
    grant: Grant,
    scopes: list[Scope],
    purpose: str,
    token_id: str,
) -> Caller:
    """The caller a grant makes of what it was asked for (a token's scopes and purpose, or
    a bulk export's), narrowed to what the grant holds now: narrowing a grant cuts its
    live tokens at once, widening it never widens them; likewise a purpose the grant no
    longer holds is no purpose at all."""
    return Caller(
        tenant=tenant,
        client=client,
        grant=grant,
        scopes=scopes_intersect(scopes, scopes_parse(grant.scopes)),
        token_id=token_id,
        purpose=purpose if purpose in grant.purposes else None,
        partner_slug=client.partner.slug,
    )


def _caller(record: AccessToken) -> Caller:
    return caller_of(
        tenant=record.tenant,
        client=record.client,
        grant=record.grant,
        scopes=scopes_parse(record.scopes),
        purpose=record.purpose,
        token_id=str(record.id),
    )


def access_switched_off(*, tenant: Tenant, client: ApiClient, grant: Grant) -> FhirError | None:
    """Why the client may not use the grant now: its client, grant or tenant is switched
    off (a token's refusal; a bulk export's reason to fail)."""
    if client.status != ClientStatus.ACTIVE:
        return FhirError(403, IssueCode.SUSPENDED, "The client has been revoked")
    if grant.status != GrantStatus.ACTIVE:
        return FhirError(403, IssueCode.SUSPENDED, "The client's grant on this tenant is revoked")
    if tenant.status != TenantStatus.ACTIVE:
        return FhirError(403, IssueCode.SUSPENDED, "The tenant is suspended")
    return None


def _outlived(record: AccessToken) -> FhirError | None:
    """A token issued before its client, grant or tenant was last deactivated: re-activating
    them serves new tokens, never the ones the deactivation cut off."""
    deactivations = (
        record.client.deactivated_at,
        record.grant.deactivated_at,
        record.tenant.deactivated_at,
    )
    if any(when is not None and record.issued_at <= when for when in deactivations):
        return _unauthorized("The access token was issued before a revocation: get a new one")
    return None


# What the checks and the caller need, and nothing else: the token is read on a cache miss.
_TOKEN_COLUMNS = (
    "id",
    "scopes",
    "purpose",
    "issued_at",
    "expires_at",
    "revoked_at",
    "client",
    "grant",
    "tenant",
    "client__id",
    "client__client_id",
    "client__status",
    "client__deactivated_at",
    "client__plan",
    "client__partner__id",
    "client__partner__slug",
    "grant__id",
    "grant__scopes",
    "grant__purposes",
    "grant__status",
    "grant__deactivated_at",
    "grant__plan",
    "grant__client",
    "grant__tenant",
    "tenant__id",
    "tenant__slug",
    "tenant__schema_name",
    "tenant__status",
    "tenant__deactivated_at",
    "tenant__plan",
)


@dataclass(frozen=True)
class TokenCheck:
    """A token that passed: its caller, and the caller generation it is known good under
    (None: unknown, so the pipeline re-reads it once its admission tells the generation)."""

    caller: Caller
    generation: int | None

    def current(self, generation: int | None) -> bool:
        return generation is not None and generation == self.generation


class TenantMismatch(NotFound):
    """A valid, active token used on another tenant's URL: the shared 404, which the
    pipeline answers with the caller's own rate-limit headers, like any other 404."""

    def __init__(self, check: TokenCheck) -> None:
        super().__init__()
        self.check = check
        self.caller = check.caller


def token_check(
    *, authorization: str | None, url_tenant_slug: str, fresh: bool = False
) -> TokenCheck:
    """Resolve the bearer token and bind it to the URL's tenant: from the token cache, or
    (on a miss, or `fresh`) from the database.

    401 for a missing, unknown, expired or revoked token, or one issued before its
    client, grant or tenant was last revoked/suspended; 403 for a suspended tenant or
    revoked client or grant; the shared 404 when the token's tenant is not the tenant
    in the URL (TenantMismatch, which carries the caller).
    """
    token_hash = credential_hash(bearer_from_header(authorization))
    entry = None if fresh else token_cache.get(token_hash)
    if entry is None:
        generation = token_cache.seen_generation  # before the read: see token_cache.py
        caller, expires_at = _caller_read(token_hash, url_tenant_slug)
        entry = entry_make(caller=caller, expires_at=expires_at, generation=generation)
        token_cache.put(token_hash, entry)
    check = TokenCheck(caller=entry.caller, generation=entry.generation)
    if entry.caller.tenant.slug != url_tenant_slug:
        # Never a 403 here: that would tell the caller the URL's tenant matters.
        raise TenantMismatch(check)
    return check


def token_cached(*, authorization: str, url_tenant_slug: str) -> Caller | None:
    """The caller token_check would give, if this process holds the token and it belongs
    to the URL's tenant; otherwise None. No query, no refusal: for the refusal gate."""
    try:
        token_hash = credential_hash(bearer_from_header(authorization))
    except FhirError:
        return None
    entry = token_cache.get(token_hash)
    if entry is None or entry.caller.tenant.slug != url_tenant_slug:
        return None
    return entry.caller


def _caller_read(token_hash: str, url_tenant_slug: str) -> tuple[Caller, float]:
    """The token's caller and expiry (epoch seconds) from one lean query, or its refusal."""
    record = (
        AccessToken.objects.select_related("client__partner", "grant", "tenant")
        .only(*_TOKEN_COLUMNS)
        .filter(token_hash=token_hash)
        .first()
    )
    if record is None:
        raise _unauthorized("The access token is not valid")
    if record.revoked_at is not None:
        raise _unauthorized("The access token has been revoked")
    if record.expires_at <= timezone.now():
        raise _unauthorized("The access token has expired", IssueCode.EXPIRED)
    # A switched-off client, grant or tenant answers 403 first: it names the cause.
    switched_off = access_switched_off(
        tenant=record.tenant, client=record.client, grant=record.grant
    )
    refusal = switched_off or _outlived(record)
    if refusal:
        # Another tenant's URL: the shared 404, whatever the refusal would have said.
        raise NotFound() if record.tenant.slug != url_tenant_slug else refusal
    return _caller(record), record.expires_at.timestamp()
