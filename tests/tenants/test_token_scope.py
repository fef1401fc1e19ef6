"""`scope` at POST /oauth/token: required (SMART Backend Services), and the granted scope
answered in one form: v2 syntax, in the order asked, duplicates dropped."""

import uuid

import pytest

from tenants.models import AccessToken
from tenants.selectors import tenant_fhir_base
from tenants.services import client_create
from tests.tenants.identity_support import assertion, basic, form_post, jwks_of, rsa_key

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("roomy_token_limits")]

CREDENTIALS_ONLY = {"grant_type": "client_credentials"}


@pytest.fixture
def issued(cast):
    return client_create(
        partner_name=f"Scope Partner {uuid.uuid4().hex[:8]}",
        tenant_slugs=["provider-a"],
        scopes="system/*.cruds",
        jwks=jwks_of((rsa_key(), "rsa-1")),
    )


@pytest.fixture
def ask(client, issued):
    auth = basic(issued.client.client_id, issued.client_secret)
    return lambda data: form_post(client, "/oauth/token", data, Authorization=auth)


@pytest.mark.parametrize("scope", [None, "", "   "])
def test_a_request_without_a_scope_is_invalid_scope_and_issues_nothing(issued, ask, scope):
    data = CREDENTIALS_ONLY if scope is None else CREDENTIALS_ONLY | {"scope": scope}
    response = ask(data)
    assert response.status_code == 400, response.content
    assert response["Cache-Control"] == "no-store"
    body = response.json()
    assert body["error"] == "invalid_scope"
    assert "scope is required" in body["error_description"]
    assert not AccessToken.objects.filter(client=issued.client).exists()


def test_a_signed_assertion_without_a_scope_is_refused_too(client, issued):
    signed = assertion(issued.client.client_id, rsa_key(), "rsa-1")
    data = CREDENTIALS_ONLY | {
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": signed,
    }
    response = form_post(client, "/oauth/token", data)
    assert response.status_code == 400, response.content
    assert response.json()["error"] == "invalid_scope"
    assert not AccessToken.objects.filter(client=issued.client).exists()


@pytest.mark.parametrize(
    ("requested", "answered"),
    [
        # v1 becomes v2; the order asked is kept.
        ("system/Observation.read system/Patient.rs", "system/Observation.rs system/Patient.rs"),
        ("system/Patient.rs system/Observation.read", "system/Patient.rs system/Observation.rs"),
        # A scope asked twice (in either syntax) is answered once, where it first appeared.
        (
            "system/Observation.read system/Patient.r system/Observation.rs",
            "system/Observation.rs system/Patient.r",
        ),
        ("system/*.*", "system/*.cruds"),
        ("system/*.write", "system/*.cud"),
        # Any run of spaces separates scopes; the answer uses one space.
        ("  system/Patient.s   system/Claim.r ", "system/Patient.s system/Claim.r"),
    ],
)
def test_the_granted_scope_is_space_separated_v2_in_the_order_asked(
    issued, ask, requested, answered
):
    response = ask(CREDENTIALS_ONLY | {"scope": requested})
    assert response.status_code == 200, response.content
    assert response.json()["scope"] == answered
    # The token holds exactly what the answer says.
    assert AccessToken.objects.get(client=issued.client).scopes == answered


def test_the_answer_is_narrowed_to_the_grant_in_the_order_asked(client, cast):
    narrow = client_create(
        partner_name=f"Narrow Partner {uuid.uuid4().hex[:8]}",
        tenant_slugs=["provider-a"],
        scopes="system/Patient.r system/Observation.rs",
    )
    assert narrow.client_secret
    response = form_post(
        client,
        "/oauth/token",
        CREDENTIALS_ONLY | {"scope": "system/Observation.cruds system/Claim.r system/*.read"},
        Authorization=basic(narrow.client.client_id, narrow.client_secret),
    )
    assert response.status_code == 200, response.content
    # Claim is not granted and is dropped; the wildcard meets each granted type in grant order.
    assert response.json()["scope"] == "system/Observation.rs system/Patient.r"


def test_the_other_tenants_client_gets_no_scope_on_this_tenant(client, cast):
    outsider = cast.outsider
    response = form_post(
        client,
        "/oauth/token",
        CREDENTIALS_ONLY
        | {"scope": "system/Patient.rs", "resource": tenant_fhir_base(cast.tenant_a)},
        Authorization=basic(outsider.client.client_id, outsider.secret),
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_target"
