"""SMART Backend Services private_key_jwt at POST /oauth/token: every way an assertion fails."""

import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tenants.models import AccessToken
from tenants.selectors import tenant_fhir_base, token_endpoint_url
from tenants.services import client_create, client_revoke
from tests.tenants.identity_support import (
    JWT_BEARER,
    assertion,
    ec_key,
    form_post,
    jwks_of,
    jwt_form,
    rsa_key,
    unsigned_assertion,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("roomy_token_limits")]


@pytest.fixture
def key_client(cast):
    """A key-only client on provider-a with an RSA and an EC P-384 key registered."""
    issued = client_create(
        partner_name=f"Key Partner {uuid.uuid4().hex[:8]}",
        tenant_slugs=["provider-a"],
        scopes="system/Patient.rs system/Observation.rs",
        jwks=jwks_of((rsa_key(), "rsa-1"), (ec_key(), "ec-1")),
        with_secret=False,
    )
    return issued.client


@pytest.fixture
def post(client):
    return lambda data: form_post(client, "/oauth/token", data)


def _refused(response, error="invalid_client", status=401):
    assert response.status_code == status, response.content
    body = response.json()
    assert body["error"] == error, body
    assert "access_token" not in body
    return body["error_description"]


@pytest.mark.parametrize(
    ("key", "kid", "alg"), [("rsa", "rsa-1", "RS384"), ("ec", "ec-1", "ES384")]
)
def test_signed_assertion_gets_a_token(key_client, post, key, kid, alg):
    private = rsa_key() if key == "rsa" else ec_key()
    signed = assertion(key_client.client_id, private, kid, alg=alg)
    response = post(jwt_form(signed, scope="system/Patient.read"))
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["scope"] == "system/Patient.rs"
    assert body["aud"] == tenant_fhir_base(key_client.grants.get().tenant)
    assert AccessToken.objects.get(client=key_client).auth_method == "private_key_jwt"


def test_alg_none_is_refused(key_client, post):
    now = int(time.time())
    claims = {
        "iss": key_client.client_id,
        "sub": key_client.client_id,
        "aud": token_endpoint_url(),
        "exp": now + 60,
        "jti": uuid.uuid4().hex,
    }
    for alg in ("none", "None", "NONE"):
        forged = unsigned_assertion(claims, {"alg": alg, "typ": "JWT", "kid": "rsa-1"})
        assert "alg" in _refused(post(jwt_form(forged)))
    assert not AccessToken.objects.filter(client=key_client).exists()


def test_hmac_with_the_public_key_as_secret_is_refused(key_client, post):
    """The classic RS/HS confusion: sign HS384 using the registered public key bytes."""
    public_pem = (
        rsa_key()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    now = int(time.time())
    claims = {
        "iss": key_client.client_id,
        "sub": key_client.client_id,
        "aud": token_endpoint_url(),
        "exp": now + 60,
        "jti": uuid.uuid4().hex,
    }
    header = {"alg": "HS384", "kid": "rsa-1"}
    import base64
    import hashlib
    import hmac
    import json

    def part(data):
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    signing_input = f"{part(header)}.{part(claims)}"
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha384).digest()
    forged = signing_input + "." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()
    _refused(post(jwt_form(forged)))


def test_rs256_is_not_accepted(key_client, post):
    signed = assertion(key_client.client_id, rsa_key(), "rsa-1", alg="RS256")
    _refused(post(jwt_form(signed)))


def test_assertion_with_wrong_aud_is_refused(key_client, post):
    for aud in (
        "https://evil.example/oauth/token",
        tenant_fhir_base(key_client.grants.get().tenant),
    ):
        signed = assertion(key_client.client_id, rsa_key(), "rsa-1", aud=aud)
        assert "aud" in _refused(post(jwt_form(signed)))


def test_expired_assertion_is_refused(key_client, post):
    signed = assertion(key_client.client_id, rsa_key(), "rsa-1", exp_in=-60)
    assert "expired" in _refused(post(jwt_form(signed)))


def test_assertion_expiring_more_than_five_minutes_ahead_is_refused(key_client, post):
    signed = assertion(key_client.client_id, rsa_key(), "rsa-1", exp_in=600)
    assert "5 minutes" in _refused(post(jwt_form(signed)))
    at_limit = assertion(key_client.client_id, rsa_key(), "rsa-1", exp_in=300)
    assert post(jwt_form(at_limit)).status_code == 200


def test_replayed_jti_is_refused(key_client, post):
    jti = uuid.uuid4().hex
    first = assertion(key_client.client_id, rsa_key(), "rsa-1", jti=jti)
    assert post(jwt_form(first)).status_code == 200
    assert "already been used" in _refused(post(jwt_form(first)))
    # A fresh assertion reusing the jti is a replay too.
    again = assertion(key_client.client_id, ec_key(), "ec-1", alg="ES384", jti=jti)
    _refused(post(jwt_form(again)))
    assert AccessToken.objects.filter(client=key_client).count() == 1


def test_forged_assertion_does_not_burn_the_jti(key_client, post):
    jti = uuid.uuid4().hex
    stranger = ec.generate_private_key(ec.SECP384R1())
    forged = assertion(key_client.client_id, stranger, "ec-1", alg="ES384", jti=jti)
    assert "signature" in _refused(post(jwt_form(forged)))
    genuine = assertion(key_client.client_id, ec_key(), "ec-1", alg="ES384", jti=jti)
    assert post(jwt_form(genuine)).status_code == 200


def test_unregistered_key_is_refused(key_client, post):
    other = rsa_key("unregistered")
    unknown_kid = assertion(key_client.client_id, other, "rsa-2")
    assert "not registered" in _refused(post(jwt_form(unknown_kid)))
    known_kid_wrong_key = assertion(key_client.client_id, other, "rsa-1")
    assert "signature" in _refused(post(jwt_form(known_kid_wrong_key)))
    no_kid = jwt.encode(
        {
            "iss": key_client.client_id,
            "sub": key_client.client_id,
            "aud": token_endpoint_url(),
            "exp": int(time.time()) + 60,
            "jti": uuid.uuid4().hex,
        },
        rsa_key(),
        algorithm="RS384",
    )
    assert "kid" in _refused(post(jwt_form(no_kid)))


def test_key_of_the_wrong_type_for_the_alg_is_refused(key_client, post):
    signed = assertion(key_client.client_id, ec_key(), "rsa-1", alg="ES384")
    _refused(post(jwt_form(signed)))


def test_client_with_no_registered_keys_cannot_use_assertions(cast, post):
    a = cast.client_a  # a secret-only client
    signed = assertion(a.client.client_id, rsa_key(), "rsa-1")
    _refused(post(jwt_form(signed)))


def test_another_clients_key_cannot_sign_for_this_client(key_client, post):
    """The other tenant cannot: a key registered by a payer-b client does not speak for A."""
    other_key = rsa_key("payer-b-key")
    client_create(
        partner_name=f"Other {uuid.uuid4().hex[:8]}",
        tenant_slugs=["payer-b"],
        scopes="system/*.rs",
        jwks=jwks_of((other_key, "rsa-1")),
        with_secret=False,
    )
    signed = assertion(key_client.client_id, other_key, "rsa-1")
    _refused(post(jwt_form(signed)))
    resource = post(
        jwt_form(
            assertion(key_client.client_id, rsa_key(), "rsa-1"),
            resource=tenant_fhir_base(key_client.grants.get().tenant).replace(
                "provider-a", "payer-b"
            ),
        )
    )
    _refused(resource, "invalid_target", 400)


@pytest.mark.parametrize(
    ("claims", "fragment"),
    [
        ({"sub": "someone-else"}, "sub"),
        ({"jti": ""}, "jti"),
        ({"nbf": int(time.time()) + 3600}, ""),
    ],
    ids=["sub-not-iss", "empty-jti", "not-yet-valid"],
)
def test_claim_problems_are_refused(key_client, post, claims, fragment):
    signed = assertion(key_client.client_id, rsa_key(), "rsa-1", claims=claims)
    assert fragment in _refused(post(jwt_form(signed)))


def test_missing_jti_is_refused(key_client, post):
    payload = {
        "iss": key_client.client_id,
        "sub": key_client.client_id,
        "aud": token_endpoint_url(),
        "exp": int(time.time()) + 60,
    }
    signed = jwt.encode(payload, rsa_key(), algorithm="RS384", headers={"kid": "rsa-1"})
    assert "jti" in _refused(post(jwt_form(signed)))


def test_revoked_client_cannot_use_its_key(key_client, post):
    client_revoke(client=key_client)
    _refused(post(jwt_form(assertion(key_client.client_id, rsa_key(), "rsa-1"))))


def test_wrong_assertion_type_and_mismatched_client_id(key_client, post):
    signed = assertion(key_client.client_id, rsa_key(), "rsa-1")
    wrong_type = jwt_form(signed) | {"client_assertion_type": "urn:example:saml"}
    _refused(post(wrong_type), "invalid_request", 400)
    mismatched = jwt_form(signed, client_id="someone-else")
    _refused(post(mismatched))
    _refused(post(jwt_form("not.a.jwt")), "invalid_request", 400)
    assert JWT_BEARER in jwt_form(signed).values()


def test_redis_unreachable_fails_closed_with_503(key_client, post, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    response = post(jwt_form(assertion(key_client.client_id, rsa_key(), "rsa-1")))
    assert response.status_code == 503
    assert response["Retry-After"]
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "transient"
    assert not AccessToken.objects.filter(client=key_client).exists()
