"""Client-side helpers for identity tests: keys, signed assertions, Basic credentials."""

import base64
import functools
import json
import time
import uuid
from typing import Any
from urllib.parse import quote_plus

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tenants.selectors import token_endpoint_url

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# SMART Backend Services requires a scope; this one asks for all the grant holds.
GRANT = {"grant_type": "client_credentials", "scope": "system/*.cruds"}


@functools.cache
def rsa_key(name: str = "rsa-1") -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def ec_key(name: str = "ec-1") -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def public_jwk(key: Any, kid: str) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
        jwk["alg"] = "RS384"
    else:
        jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
        jwk["alg"] = "ES384"
    jwk["kid"] = kid
    return dict(jwk)


def jwks_of(*pairs: tuple[Any, str]) -> dict[str, Any]:
    return {"keys": [public_jwk(key, kid) for key, kid in pairs]}


def assertion(
    client_id: str,
    key: Any,
    kid: str,
    *,
    alg: str = "RS384",
    aud: str | None = None,
    exp_in: int = 240,
    jti: str | None = None,
    claims: dict[str, Any] | None = None,
    header: dict[str, Any] | None = None,
) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": client_id,
        "sub": client_id,
        "aud": aud if aud is not None else token_endpoint_url(),
        "exp": now + exp_in,
        "iat": now,
        "jti": jti or uuid.uuid4().hex,
    }
    payload.update(claims or {})
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid, **(header or {})})


def unsigned_assertion(payload: dict[str, Any], header: dict[str, Any]) -> str:
    """A JWT with whatever header is given and no signature (alg: none attacks)."""

    def part(data: dict[str, Any]) -> str:
        raw = json.dumps(data, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{part(header)}.{part(payload)}."


def basic(client_id: str, secret: str) -> str:
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def jwt_form(client_assertion: str, **extra: str) -> dict[str, str]:
    return {
        **GRANT,
        "client_assertion_type": JWT_BEARER,
        "client_assertion": client_assertion,
        **extra,
    }


def form_post(django_client: Any, path: str, data: dict[str, str], **headers: str) -> Any:
    """POST an OAuth form with the Django test client (REMOTE_ADDR sets the peer address)."""
    from urllib.parse import urlencode

    environ = {"REMOTE_ADDR": headers.pop("REMOTE_ADDR")} if "REMOTE_ADDR" in headers else {}
    return django_client.post(
        path,
        data=urlencode(data),
        content_type="application/x-www-form-urlencoded",
        headers=headers,
        **environ,
    )
