"""SMART Backend Services client authentication: private_key_jwt client assertions.

The assertion is a JWT the client signs with a key it registered: the keys stored on the
client (ApiClient.jwks), or those published at its registered JWKS URL
(ApiClient.jwks_url, fetched by tenants/jwks_fetch.py). An assertion whose header has a
`jku` must name exactly that registered URL and is verified with the keys published
there; without `jku`, the stored keys are used, or the URL's when none are stored. A key
the token itself carries (`jwk`) or another URL it points at is never used.
We accept RS384 and ES384 only, look the key up by `kid`, and check
iss = sub = client_id, aud = our token endpoint, exp at most five minutes ahead,
and a `jti` never seen before. Replay protection is recorded in PostgreSQL (it
survives a Redis restart) behind a fast Redis check; when Redis cannot answer we
refuse (TokenServiceUnavailable) rather than accept a possible replay.
"""

import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

import jwt
import redis
from django.conf import settings
from django.utils import timezone

from fhirplatform.redis_clients import redis_client
from tenants.jwks_fetch import JwksFetchError, jwks_url_keys
from tenants.models import ApiClient, ClientStatus
from tenants.oauth import (
    MAX_CLIENT_ID_LENGTH,
    OAuthError,
    OAuthErrorCode,
    TokenServiceUnavailable,
    oauth_text_check,
)
from tenants.services import JWK_PRIVATE_FIELDS, jti_hash, jti_spend

logger = logging.getLogger(__name__)


class AssertionAlgorithm(StrEnum):
    RS384 = "RS384"
    ES384 = "ES384"


# Which JWK a given algorithm may verify with (kty, and the curve for EC).
_KEY_TYPE_FOR = {
    AssertionAlgorithm.RS384: ("RSA", None),
    AssertionAlgorithm.ES384: ("EC", "P-384"),
}
MAX_ASSERTION_LIFETIME_SECONDS = 300
CLOCK_SKEW_SECONDS = 5
MAX_ASSERTION_BYTES = 8192
MAX_JTI_LENGTH = 256
JTI_KEY_PREFIX = "oauth:jti"


def _redis() -> redis.Redis:
    return redis_client(settings.REDIS_URL, timeout_seconds=0.5)


def _rejected(description: str) -> OAuthError:
    return OAuthError(OAuthErrorCode.INVALID_CLIENT, description)


def assertion_client_id(assertion: str) -> str:
    """The client id an assertion claims (its `iss`), read before verification.

    Used only to find the registered keys and to key the per-client rate limit.
    """
    if len(assertion) > MAX_ASSERTION_BYTES:
        raise OAuthError(OAuthErrorCode.INVALID_REQUEST, "client_assertion is too large")
    try:
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise OAuthError(
            OAuthErrorCode.INVALID_REQUEST, "client_assertion is not a well-formed JWT"
        ) from None
    issuer = claims.get("iss")
    if not isinstance(issuer, str) or not issuer:
        raise _rejected("client_assertion has no iss claim")
    return oauth_text_check(
        issuer, what="client_assertion iss", error=OAuthErrorCode.INVALID_CLIENT
    )


@dataclass(frozen=True)
class _Header:
    algorithm: AssertionAlgorithm
    kid: str
    jku: str | None  # None: the header has no jku


def _header(assertion: str) -> _Header:
    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.PyJWTError:
        raise OAuthError(
            OAuthErrorCode.INVALID_REQUEST, "client_assertion is not a well-formed JWT"
        ) from None
    algorithm = header.get("alg")
    if not isinstance(algorithm, str) or algorithm not in AssertionAlgorithm.__members__:
        raise _rejected(f"client_assertion alg '{algorithm}' is not accepted: use RS384 or ES384")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise _rejected("client_assertion header must name the signing key (kid)")
    jku = header.get("jku")
    if jku is not None and not isinstance(jku, str):
        raise _rejected("client_assertion jku must be a URL")
    return _Header(AssertionAlgorithm(algorithm), kid, jku)


def _candidate_keys(client: ApiClient, header: _Header) -> list[Any]:
    """The keys this assertion may be verified with (see the module docstring)."""
    if header.jku is not None:
        if not client.jwks_url or header.jku != client.jwks_url:
            raise _rejected(
                "client_assertion jku must be the JWKS URL registered for this client"
                + ("" if client.jwks_url else " (it has none)")
            )
    elif client.jwks:
        return list(client.jwks.get("keys", []))
    try:
        return jwks_url_keys(client.jwks_url, kid=header.kid)
    except JwksFetchError as exc:
        raise _rejected(f"the client's JWKS URL gave no usable keys: {exc}") from None


def _registered_key(keys: list[Any], algorithm: AssertionAlgorithm, kid: str) -> jwt.PyJWK:
    kty, curve = _KEY_TYPE_FOR[algorithm]
    for key in keys:
        if not isinstance(key, dict) or key.get("kid") != kid:
            continue
        if JWK_PRIVATE_FIELDS & key.keys():
            raise _rejected(f"key '{kid}' carries private key material: it is not used")
        if key.get("kty") != kty or (curve and key.get("crv") != curve):
            raise _rejected(f"key '{kid}' cannot verify {algorithm}")
        if key.get("alg") not in (None, str(algorithm)):
            raise _rejected(f"key '{kid}' is registered for {key.get('alg')}, not {algorithm}")
        try:
            return jwt.PyJWK(key, algorithm=str(algorithm))
        except jwt.PyJWTError:
            raise _rejected(f"registered key '{kid}' is unusable") from None
    raise _rejected(f"key '{kid}' is not registered for this client")


def _claims(
    assertion: str, key: jwt.PyJWK, algorithm: AssertionAlgorithm, client_id: str, audience: str
) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(
            assertion,
            key,
            algorithms=[str(algorithm)],
            audience=audience,
            issuer=client_id,
            leeway=CLOCK_SKEW_SECONDS,
            options={"require": ["iss", "sub", "aud", "exp", "jti"]},
        )
    except jwt.ExpiredSignatureError:
        raise _rejected("client_assertion has expired") from None
    except jwt.InvalidAudienceError:
        raise _rejected(f"client_assertion aud must be {audience}") from None
    except jwt.InvalidSignatureError:
        raise _rejected("client_assertion signature does not verify") from None
    except jwt.PyJWTError as exc:
        raise _rejected(f"client_assertion is invalid: {exc}") from None
    if claims["sub"] != client_id:
        raise _rejected("client_assertion sub must equal iss (the client id)")
    if not isinstance(claims["exp"], int | float):
        raise _rejected("client_assertion exp must be a number")
    if claims["exp"] > time.time() + MAX_ASSERTION_LIFETIME_SECONDS + CLOCK_SKEW_SECONDS:
        raise _rejected("client_assertion exp must be at most 5 minutes ahead")
    jti = claims["jti"]
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_LENGTH:
        raise _rejected(f"client_assertion jti must be a string of 1-{MAX_JTI_LENGTH} characters")
    oauth_text_check(jti, what="client_assertion jti", error=OAuthErrorCode.INVALID_CLIENT)
    return claims


def jti_remember(*, client: ApiClient, jti: str, expires_at: float) -> bool:
    """Spend a jti until its assertion expires; False when it was already used.

    Redis answers the common replay fast; PostgreSQL (services.jti_spend) is the record
    that survives a Redis restart. Raises TokenServiceUnavailable when Redis cannot
    answer (fail closed, like the endpoint's rate limits that need it too).
    """
    # Kept for as long as the assertion could still pass the exp check.
    ttl = max(int(expires_at - time.time()) + CLOCK_SKEW_SECONDS + 1, 1)
    key = f"{JTI_KEY_PREFIX}:{client.client_id}:{jti_hash(jti)}"
    try:
        fresh = bool(_redis().set(key, "1", nx=True, ex=ttl))
    except redis.RedisError as exc:
        logger.error("jti store unreachable", extra={"client": client.client_id, "error": str(exc)})
        raise TokenServiceUnavailable("replay protection store is unreachable") from exc
    return fresh and jti_spend(
        client=client, jti=jti, expires_at=timezone.now() + timedelta(seconds=ttl)
    )


def assertion_verify(*, assertion: str, audience: str) -> ApiClient:
    """The active client that signed this assertion for `audience` (the token endpoint it
    was posted to), or OAuthError(invalid_client)."""
    client_id = assertion_client_id(assertion)
    header = _header(assertion)
    client = ApiClient.objects.filter(client_id=client_id[:MAX_CLIENT_ID_LENGTH]).first()
    if client is None or not (client.jwks or client.jwks_url):
        raise _rejected("Client authentication failed")
    key = _registered_key(_candidate_keys(client, header), header.algorithm, header.kid)
    claims = _claims(assertion, key, header.algorithm, client.client_id, audience)
    if client.status != ClientStatus.ACTIVE:
        raise _rejected("Client authentication failed")
    # The jti is spent only after the signature verified: a forger cannot burn real ones.
    if not jti_remember(client=client, jti=claims["jti"], expires_at=claims["exp"]):
        raise _rejected("client_assertion jti has already been used")
    return client
