"""Secret rotation with a grace period, key rotation, and token revocation (RFC 7009)."""

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from tenants.models import AccessToken, ClientSecret
from tenants.services import (
    ProvisioningError,
    client_create,
    client_jwks_set,
    client_secret_rotate,
    token_revoke,
)
from tests.tenants.identity_support import (
    GRANT,
    assertion,
    basic,
    ec_key,
    form_post,
    jwks_of,
    jwt_form,
    rsa_key,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("roomy_token_limits")]


def _new_client(**kwargs):
    return client_create(
        partner_name=f"Rotation Partner {uuid.uuid4().hex[:8]}",
        tenant_slugs=["provider-a"],
        scopes="system/*.rs",
        **kwargs,
    )


def _token_status(client, client_id, secret):
    return form_post(client, "/oauth/token", GRANT, Authorization=basic(client_id, secret))


def _read(client, token, slug="provider-a"):
    return client.get(
        f"/fhir/{slug}/Patient/does-not-matter", headers={"Authorization": f"Bearer {token}"}
    )


def test_old_secret_stays_valid_during_the_grace_period(client, settings):
    settings.CLIENT_SECRET_ROTATION_GRACE_SECONDS = 3600
    issued = _new_client()
    client_id, old = issued.client.client_id, issued.client_secret
    new = client_secret_rotate(client=issued.client)
    assert new != old
    assert _token_status(client, client_id, old).status_code == 200
    assert _token_status(client, client_id, new).status_code == 200
    old_row = ClientSecret.objects.get(client=issued.client, hint=old[-4:])
    assert old_row.expires_at is not None
    assert timedelta(seconds=3590) < old_row.expires_at - timezone.now() <= timedelta(seconds=3600)

    # Once the grace period is over the old secret is refused and the new one still works.
    ClientSecret.objects.filter(pk=old_row.pk).update(expires_at=timezone.now())
    assert _token_status(client, client_id, old).status_code == 401
    assert _token_status(client, client_id, new).status_code == 200


def test_rotating_again_never_extends_an_older_secret(settings):
    settings.CLIENT_SECRET_ROTATION_GRACE_SECONDS = 60
    issued = _new_client()
    client_secret_rotate(client=issued.client)
    first_expiry = ClientSecret.objects.get(client=issued.client, hint=issued.client_secret[-4:])
    settings.CLIENT_SECRET_ROTATION_GRACE_SECONDS = 86400
    client_secret_rotate(client=issued.client)
    again = ClientSecret.objects.get(pk=first_expiry.pk)
    assert again.expires_at == first_expiry.expires_at
    assert ClientSecret.objects.filter(client=issued.client, expires_at__isnull=True).count() == 1


def test_zero_grace_retires_the_old_secret_at_once(client, settings):
    settings.CLIENT_SECRET_ROTATION_GRACE_SECONDS = 0
    issued = _new_client()
    new = client_secret_rotate(client=issued.client)
    assert _token_status(client, issued.client.client_id, issued.client_secret).status_code == 401
    assert _token_status(client, issued.client.client_id, new).status_code == 200


def test_rotation_of_one_client_does_not_touch_the_other(client, cast):
    """The other tenant's client keeps its secret when this one rotates."""
    issued = _new_client()
    client_secret_rotate(client=issued.client)
    b = cast.client_b
    assert _token_status(client, b.client.client_id, b.secret).status_code == 200


def test_key_rotation_replaces_the_registered_keys(client):
    issued = _new_client(jwks=jwks_of((rsa_key(), "rsa-1")), with_secret=False)
    client_id = issued.client.client_id

    def token_with(key, kid, alg):
        signed = assertion(client_id, key, kid, alg=alg)
        return form_post(client, "/oauth/token", jwt_form(signed)).status_code

    assert token_with(rsa_key(), "rsa-1", "RS384") == 200
    # Overlap: old and new registered together, both sign.
    client_jwks_set(client=issued.client, jwks=jwks_of((rsa_key(), "rsa-1"), (ec_key(), "ec-1")))
    assert token_with(rsa_key(), "rsa-1", "RS384") == 200
    assert token_with(ec_key(), "ec-1", "ES384") == 200
    # Old key dropped: refused from the next request.
    client_jwks_set(client=issued.client, jwks=jwks_of((ec_key(), "ec-1")))
    assert token_with(rsa_key(), "rsa-1", "RS384") == 401
    assert token_with(ec_key(), "ec-1", "ES384") == 200


def test_bad_jwks_changes_nothing():
    issued = _new_client(jwks=jwks_of((rsa_key(), "rsa-1")))
    private = jwks_of((rsa_key(), "rsa-2"))
    private["keys"][0]["d"] = "secret-part"
    bad: dict[str, Any]
    for bad in (
        {"keys": []},
        {"nope": 1},
        private,
        {"keys": [{"kty": "oct", "k": "x", "kid": "h"}]},
    ):
        with pytest.raises(ProvisioningError):
            client_jwks_set(client=issued.client, jwks=bad)
    issued.client.refresh_from_db()
    assert [key["kid"] for key in issued.client.jwks["keys"]] == ["rsa-1"]


def test_key_only_client_cannot_drop_its_last_credential():
    issued = _new_client(jwks=jwks_of((rsa_key(), "rsa-1")), with_secret=False)
    with pytest.raises(ProvisioningError):
        client_jwks_set(client=issued.client, jwks=None)


def test_revoked_token_is_refused_on_the_next_request(client, cast):
    token = cast.client_a.token()
    assert _read(client, token).status_code == 404  # authenticated: the resource is missing
    record = AccessToken.objects.order_by("-issued_at").first()
    assert record is not None
    token_revoke(token=record)
    response = _read(client, token)
    assert response.status_code == 401
    assert response.json()["resourceType"] == "OperationOutcome"


def test_client_revokes_its_own_token_over_rfc7009(client, cast):
    a = cast.client_a
    token = a.token()
    response = form_post(
        client, "/oauth/revoke", {"token": token}, Authorization=basic(a.client.client_id, a.secret)
    )
    assert response.status_code == 200
    assert _read(client, token).status_code == 401


def test_another_client_cannot_revoke_this_token(client, cast):
    """payer-b's client revoking provider-a's token: answered 200, and nothing happens."""
    token = cast.client_a.token()
    b = cast.client_b
    response = form_post(
        client, "/oauth/revoke", {"token": token}, Authorization=basic(b.client.client_id, b.secret)
    )
    assert response.status_code == 200
    assert _read(client, token).status_code == 404  # still valid


def test_revocation_endpoint_requires_client_authentication(client, cast):
    token = cast.client_a.token()
    response = form_post(client, "/oauth/revoke", {"token": token})
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert _read(client, token).status_code == 404
