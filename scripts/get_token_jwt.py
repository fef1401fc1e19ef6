#!/usr/bin/env python3
"""SMART Backend Services from a partner's side: sign a client assertion, get a token, call FHIR.

Two steps, see docs/auth.md:

  1. Make a key pair and the public JWKS to register with the platform:
       python scripts/get_token_jwt.py keygen --key partner-key.pem --jwks partner-jwks.json
     then an operator registers it:
       python manage.py create_client --partner "Acme" --tenant provider-a \\
           --scope "system/Patient.rs" --jwks partner-jwks.json --no-secret --json

  2. Get a token and call the FHIR API:
       python scripts/get_token_jwt.py token --fhir-base http://localhost:8000/fhir/provider-a \\
           --client-id <client_id> --key partner-key.pem --scope "system/Patient.rs"

Needs only PyJWT and cryptography (pip install "PyJWT[crypto]").
"""

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def keygen(key_path: Path, jwks_path: Path, kind: str) -> None:
    """Write a private key (PEM, keep it secret) and the public JWKS to register."""
    if kind == "ec":
        private: Any = ec.generate_private_key(ec.SECP384R1())
        public_jwk = json.loads(ECAlgorithm.to_jwk(private.public_key()))
        public_jwk["alg"] = "ES384"
    else:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public_jwk = json.loads(RSAAlgorithm.to_jwk(private.public_key()))
        public_jwk["alg"] = "RS384"
    public_jwk["kid"] = f"{kind}-{uuid.uuid4().hex[:8]}"
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    key_path.write_bytes(pem)
    key_path.chmod(0o600)
    jwks_path.write_text(json.dumps({"keys": [public_jwk]}, indent=2))
    print(
        f"private key: {key_path} (keep it secret)\npublic JWKS: {jwks_path} "
        f"(kid {public_jwk['kid']}, {public_jwk['alg']})"
    )


def _http(
    method: str,
    url: str,
    *,
    data: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    # Only http(s) URLs get here: --fhir-base is checked, the token endpoint comes from it.
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})  # noqa: S310
    if body is not None:
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(request, timeout=15) as response:  # noqa: S310 (http/https only)
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def _load_key(key_path: Path, kid: str | None, jwks_path: Path | None) -> tuple[Any, str, str]:
    private = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    algorithm = "ES384" if isinstance(private, ec.EllipticCurvePrivateKey) else "RS384"
    if kid is None and jwks_path is not None:
        kid = json.loads(jwks_path.read_text())["keys"][0]["kid"]
    if not kid:
        sys.exit("--kid (or --jwks naming the registered key) is required")
    return private, kid, algorithm


def token(args: argparse.Namespace) -> int:
    fhir_base = args.fhir_base.rstrip("/")
    if not fhir_base.startswith(("http://", "https://")):
        sys.exit("--fhir-base must be an http(s) URL")
    # 1. Discovery: the token endpoint and what it accepts.
    status, config = _http("GET", f"{fhir_base}/.well-known/smart-configuration")
    if status != 200:
        sys.exit(f"discovery failed: {status} {config}")
    token_endpoint = config["token_endpoint"]
    print(f"token endpoint: {token_endpoint}")

    # 2. The client assertion: iss = sub = client id, aud = token endpoint, short-lived, new jti.
    private, kid, algorithm = _load_key(Path(args.key), args.kid, args.jwks and Path(args.jwks))
    now = int(time.time())
    claims = {
        "iss": args.client_id,
        "sub": args.client_id,
        "aud": token_endpoint,
        "iat": now,
        "exp": now + 240,
        "jti": str(uuid.uuid4()),
    }
    signed = jwt.encode(claims, private, algorithm=algorithm, headers={"kid": kid, "typ": "JWT"})

    # 3. The token request; `resource` names the tenant's FHIR base the token is for.
    status, body = _http(
        "POST",
        token_endpoint,
        data={
            "grant_type": "client_credentials",
            "scope": args.scope,
            "client_assertion_type": JWT_BEARER,
            "client_assertion": signed,
            "resource": fhir_base,
        },
    )
    if status != 200:
        print(f"token request refused: {status} {json.dumps(body)}", file=sys.stderr)
        return 1
    print(f"access token for {body['aud']} ({body['scope']}), expires in {body['expires_in']} s")

    # 4. The FHIR call.
    status, bundle = _http(
        "GET",
        f"{fhir_base}/{args.resource_type}?_count=5",
        headers={
            "Authorization": f"Bearer {body['access_token']}",
            "Accept": "application/fhir+json",
        },
    )
    print(
        f"GET {args.resource_type}: {status} {bundle.get('resourceType')}, "
        f"{len(bundle.get('entry', []))} entries"
    )
    return 0 if status == 200 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("keygen", help="make a key pair and the JWKS to register")
    make.add_argument("--key", required=True, type=Path, help="private key PEM to write")
    make.add_argument("--jwks", required=True, type=Path, help="public JWKS to write")
    make.add_argument("--type", choices=["rsa", "ec"], default="rsa")
    get = commands.add_parser("token", help="get a token with a signed assertion, call FHIR")
    get.add_argument(
        "--fhir-base", required=True, help="e.g. http://localhost:8000/fhir/provider-a"
    )
    get.add_argument("--client-id", required=True)
    get.add_argument("--key", required=True, help="private key PEM")
    get.add_argument("--kid", help="registered key id (default: first key of --jwks)")
    get.add_argument("--jwks", help="the JWKS you registered, to read the kid from")
    get.add_argument("--scope", default="system/Patient.rs")
    get.add_argument("--resource-type", default="Patient")
    args = parser.parse_args()
    if args.command == "keygen":
        keygen(args.key, args.jwks, args.type)
        return 0
    return token(args)


if __name__ == "__main__":
    sys.exit(main())
