"""Bad input at the token endpoint: a clear OAuth error, never a 500, nothing issued.

NUL, control characters, non-ASCII and undecodable bytes in Basic credentials, form
fields and assertion claims; oversized bodies and values.
"""

import base64
import uuid

import pytest
from django.conf import settings

from tenants.models import AccessToken, ApiClient, UsedJti
from tenants.services import client_create
from tests.tenants.identity_support import (
    JWT_BEARER,
    assertion,
    basic,
    form_post,
    jwks_of,
    jwt_form,
    rsa_key,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("roomy_token_limits")]

GRANT = {"grant_type": "client_credentials"}


@pytest.fixture
def key_client(cast) -> ApiClient:
    return client_create(
        partner_name=f"Bad Input {uuid.uuid4().hex[:8]}",
        tenant_slugs=["provider-a"],
        scopes="system/Patient.rs",
        jwks=jwks_of((rsa_key(), "rsa-1")),
    ).client


def _oauth_refusal(response, error: str, status: int) -> None:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["error"] == error, body
    assert body["error_description"]
    assert "access_token" not in body


def _raw_basic(raw: bytes) -> str:
    return "Basic " + base64.b64encode(raw).decode()


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(basic("client\x00id", "secret"), id="nul-in-client-id"),
        pytest.param(basic("client", "sec\x00ret"), id="nul-in-secret"),
        pytest.param(_raw_basic(b"client\x00id:secret"), id="raw-nul-in-client-id"),
        pytest.param(_raw_basic(b"client:secret\x00"), id="raw-nul-in-secret"),
        pytest.param(_raw_basic(b"cli\xffent:secret"), id="non-utf8-credentials"),
        pytest.param(_raw_basic(b"%ED%A0%80:secret"), id="encoded-surrogate"),
        pytest.param(_raw_basic("cliënt:secret".encode()), id="non-ascii-client-id"),
        pytest.param(_raw_basic(b"client:\x07bell"), id="control-character"),
        pytest.param("Basic \u00e9\u00e9\u00e9\u00e9", id="non-ascii-header"),
    ],
)
def test_bad_basic_credentials_are_invalid_request(client, cast, authorization):
    response = form_post(client, "/oauth/token", GRANT, Authorization=authorization)
    _oauth_refusal(response, "invalid_request", 400)


def test_a_real_client_id_with_nul_appended_is_refused_not_matched(client, cast):
    a = cast.client_a
    response = form_post(
        client, "/oauth/token", GRANT, Authorization=basic(a.client.client_id + "\x00", a.secret)
    )
    _oauth_refusal(response, "invalid_request", 400)
    assert not AccessToken.objects.filter(client=a.client, auth_method="client_secret_basic")


@pytest.mark.parametrize("field", ["grant_type", "scope", "resource", "aud", "client_id"])
@pytest.mark.parametrize("bad", ["\x00", "\x1b[2J", "\u00e9", "\ud7ff"], ids=repr)
def test_bad_characters_in_a_form_field_are_invalid_request(client, cast, field, bad):
    a = cast.client_a
    data = GRANT | {field: f"system{bad}"}
    response = form_post(
        client, "/oauth/token", data, Authorization=basic(a.client.client_id, a.secret)
    )
    _oauth_refusal(response, "invalid_request", 400)


def test_a_nul_in_a_parameter_name_is_invalid_request(client, cast):
    a = cast.client_a
    response = form_post(
        client,
        "/oauth/token",
        GRANT | {"sco\x00pe": "system/Patient.rs"},
        Authorization=basic(a.client.client_id, a.secret),
    )
    _oauth_refusal(response, "invalid_request", 400)


@pytest.mark.parametrize(
    "body",
    [
        b"grant_type=client_credentials&scope=\xff\xfe",
        b"grant_type=client_credentials&scope=%ff%fe",
        b"grant_type=client_credentials&scope=%00",
        b"grant_\xc3=client_credentials",
    ],
    ids=["raw-non-utf8", "encoded-non-utf8", "encoded-nul", "non-utf8-name"],
)
def test_undecodable_form_bodies_are_invalid_request(client, cast, body):
    a = cast.client_a
    response = client.post(
        "/oauth/token",
        data=body,
        content_type="application/x-www-form-urlencoded",
        headers={"Authorization": basic(a.client.client_id, a.secret)},
    )
    _oauth_refusal(response, "invalid_request", 400)


@pytest.mark.parametrize(
    ("claims", "header_kid"),
    [
        pytest.param({"iss": "cli\x00ent", "sub": "cli\x00ent"}, "rsa-1", id="nul-in-iss"),
        pytest.param({"iss": "\ud800", "sub": "\ud800"}, "rsa-1", id="surrogate-iss"),
        pytest.param({"sub": "x\x00"}, "rsa-1", id="nul-in-sub"),
        pytest.param({"jti": "j\x00ti"}, "rsa-1", id="nul-in-jti"),
        pytest.param({"jti": "\udfff"}, "rsa-1", id="surrogate-jti"),
        pytest.param({"jti": "jtï"}, "rsa-1", id="non-ascii-jti"),
        pytest.param({"aud": "http://\x00"}, "rsa-1", id="nul-in-aud"),
        pytest.param({"exp": 10**300}, "rsa-1", id="huge-exp"),
        pytest.param({}, "rsa\x00-1", id="nul-in-kid"),
    ],
)
def test_bad_assertion_claims_are_invalid_client(client, key_client, claims, header_kid):
    signed = assertion(key_client.client_id, rsa_key(), header_kid, claims=claims)
    response = form_post(client, "/oauth/token", jwt_form(signed))
    _oauth_refusal(response, "invalid_client", 401)
    assert not AccessToken.objects.filter(client=key_client).exists()
    assert not UsedJti.objects.filter(client=key_client).exists()


def test_a_nul_in_the_assertion_itself_is_invalid_request(client, key_client):
    signed = assertion(key_client.client_id, rsa_key(), "rsa-1")
    response = form_post(client, "/oauth/token", jwt_form(signed[:20] + "\x00" + signed[20:]))
    _oauth_refusal(response, "invalid_request", 400)


def test_a_body_over_the_upload_limit_is_invalid_request(client, cast):
    a = cast.client_a
    huge = "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)
    response = form_post(
        client,
        "/oauth/token",
        GRANT | {"scope": huge},
        Authorization=basic(a.client.client_id, a.secret),
    )
    _oauth_refusal(response, "invalid_request", 400)


def test_too_many_form_fields_is_invalid_request(client, cast):
    a = cast.client_a
    fields = {f"f{index}": "x" for index in range(settings.DATA_UPLOAD_MAX_NUMBER_FIELDS + 1)}
    response = form_post(
        client, "/oauth/token", GRANT | fields, Authorization=basic(a.client.client_id, a.secret)
    )
    _oauth_refusal(response, "invalid_request", 400)


@pytest.mark.parametrize(
    ("data", "authorization", "error", "status"),
    [
        pytest.param(
            GRANT | {"scope": "system/Patient.rs " * 20_000},
            None,
            "invalid_request",
            400,
            id="huge-scope-list",
        ),
        pytest.param(GRANT, "long-id", "invalid_client", 401, id="huge-client-id"),
        pytest.param(
            GRANT | {"client_assertion_type": JWT_BEARER, "client_assertion": "a." * 50_000},
            "",
            "invalid_request",
            400,
            id="huge-assertion",
        ),
    ],
)
def test_huge_values_get_an_oauth_error(client, cast, data, authorization, error, status):
    a = cast.client_a
    headers = {}
    if authorization is None:
        headers["Authorization"] = basic(a.client.client_id, a.secret)
    elif authorization == "long-id":
        headers["Authorization"] = basic("c" * 100_000, "s" * 100_000)
    response = form_post(client, "/oauth/token", data, **headers)
    _oauth_refusal(response, error, status)


def test_revocation_refuses_a_nul_token_as_invalid_request(client, cast):
    a = cast.client_a
    response = form_post(
        client,
        "/oauth/revoke",
        {"token": "abc\x00def"},
        Authorization=basic(a.client.client_id, a.secret),
    )
    _oauth_refusal(response, "invalid_request", 400)
