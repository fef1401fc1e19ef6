"""private_key_jwt with a registered JWKS URL: `jku` must name it, the keys come from a real
server on loopback (tests/tenants/jwks_server.py), fetched under the platform's guards."""

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.core.management import CommandError, call_command
from jwt.algorithms import RSAAlgorithm

from scripts.loopback import free_port
from tenants.jwks_fetch import MAX_JWKS_BYTES, jwks_url_cache_clear
from tenants.models import AccessToken, ApiClient
from tenants.services import (
    IssuedClient,
    ProvisioningError,
    client_create,
    client_update,
    jwks_url_clean,
)
from tests.tenants.admin_support import change_form_data, form_errors, operator_browser
from tests.tenants.identity_support import (
    assertion,
    ec_key,
    form_post,
    jwks_of,
    jwt_form,
    rsa_key,
)
from tests.tenants.jwks_server import JwksServer, jwks_server

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("roomy_token_limits")]


@pytest.fixture
def loopback(settings):
    """The documented demo/test switch: JWKS URLs on loopback, over http."""
    settings.JWKS_URL_ALLOW_LOOPBACK_HTTP = True
    settings.JWKS_URL_READ_TIMEOUT_SECONDS = 1
    settings.JWKS_URL_CONNECT_TIMEOUT_SECONDS = 1
    return settings


@pytest.fixture
def server(tmp_path: Path, loopback) -> Iterator[JwksServer]:
    # A port can be served again by a later test: start each from an empty key cache.
    jwks_url_cache_clear()
    with jwks_server(tmp_path) as served:
        served.publish(jwks_of((rsa_key(), "rsa-1")))
        yield served
    jwks_url_cache_clear()


def _client(jwks_url: str, *, jwks: dict | None = None) -> IssuedClient:
    return client_create(
        partner_name=f"Jku Partner {uuid.uuid4().hex[:8]}",
        tenant_slugs=["provider-a"],
        scopes="system/Patient.rs",
        jwks=jwks,
        jwks_url=jwks_url,
        with_secret=False,
    )


@pytest.fixture
def post(client):
    return lambda signed: form_post(client, "/oauth/token", jwt_form(signed))


def _signed(issued: IssuedClient, kid: str = "rsa-1", key=None, **header: str) -> str:
    return assertion(issued.client.client_id, key or rsa_key(), kid, header=header)


def _refused(response, fragment: str) -> str:
    assert response.status_code == 401, response.content
    body = response.json()
    assert body["error"] == "invalid_client", body
    assert fragment in body["error_description"], body
    return str(body["error_description"])


def _issued(response) -> None:
    assert response.status_code == 200, response.content
    assert response.json()["scope"] == "system/Patient.rs"


def test_an_assertion_naming_the_registered_jwks_url_gets_a_token(server, post):
    issued = _client(server.url())
    _issued(post(_signed(issued, jku=server.url())))
    assert server.hits["/jwks.json"] == 1
    assert AccessToken.objects.filter(client=issued.client).count() == 1


def test_without_jku_a_url_only_client_is_verified_with_the_published_keys(server, post):
    issued = _client(server.url())
    _issued(post(_signed(issued)))
    assert server.hits["/jwks.json"] == 1


def test_a_jku_naming_another_url_is_refused_and_never_fetched(server, post):
    elsewhere = server.publish(jwks_of((rsa_key(), "rsa-1")), "other.json")
    issued = _client(server.url())
    description = _refused(post(_signed(issued, jku=elsewhere)), "jku")
    assert "registered" in description
    # Near misses are other URLs too: exact match only.
    for near in (server.url() + "?", server.url().upper(), server.url() + "#x"):
        _refused(post(_signed(issued, jku=near)), "jku")
    assert server.hits["/other.json"] == 0
    assert not AccessToken.objects.filter(client=issued.client).exists()


def test_a_jku_on_a_client_without_a_jwks_url_is_refused(server, post):
    issued = _client("", jwks=jwks_of((rsa_key(), "rsa-1")))
    _refused(post(_signed(issued, jku=server.url())), "it has none")
    assert server.hits["/jwks.json"] == 0


def test_a_non_string_jku_is_refused(server, post):
    issued = _client(server.url())
    _refused(post(_signed(issued, jku=["x"])), "jku must be a URL")  # type: ignore[arg-type]


def test_stored_keys_are_used_without_jku_even_when_a_url_is_registered(server, post):
    issued = _client(server.url(), jwks=jwks_of((ec_key(), "ec-1")))
    _issued(post(assertion(issued.client.client_id, ec_key(), "ec-1", alg="ES384")))
    assert server.hits["/jwks.json"] == 0
    # The URL's key is not among the stored ones: without jku it is not used.
    _refused(post(_signed(issued)), "not registered")
    # With jku, the published keys are.
    _issued(post(_signed(issued, jku=server.url())))


def test_the_other_clients_url_does_not_verify_this_client(server, post):
    mine = _client(server.url())
    theirs_url = server.publish(jwks_of((ec_key("theirs"), "theirs")), "theirs.json")
    _client(theirs_url)
    forged = assertion(mine.client.client_id, ec_key("theirs"), "theirs", alg="ES384")
    _refused(post(forged), "not registered")
    _refused(
        post(
            assertion(
                mine.client.client_id,
                ec_key("theirs"),
                "theirs",
                alg="ES384",
                header={"jku": theirs_url},
            )
        ),
        "jku",
    )


def test_kid_rotation_refetches_once_and_no_more_than_the_refresh_interval(server, post, loopback):
    loopback.JWKS_URL_REFRESH_SECONDS = 1
    issued = _client(server.url())
    _issued(post(_signed(issued)))
    _issued(post(_signed(issued)))
    assert server.hits["/jwks.json"] == 1  # the second came from the cache

    server.publish(jwks_of((rsa_key(), "rsa-1"), (rsa_key("rsa-2"), "rsa-2")))
    # Within the interval an unknown kid does not make us fetch.
    _refused(post(_signed(issued, "rsa-2", rsa_key("rsa-2"))), "not registered")
    assert server.hits["/jwks.json"] == 1

    time.sleep(1.1)
    _issued(post(_signed(issued, "rsa-2", rsa_key("rsa-2"))))
    assert server.hits["/jwks.json"] == 2
    # The refreshed set serves both keys; an unknown kid right after fetches nothing.
    _issued(post(_signed(issued)))
    _issued(post(_signed(issued, "rsa-2", rsa_key("rsa-2"))))
    for _ in range(3):
        _refused(post(_signed(issued, "nobody", rsa_key("nobody"))), "not registered")
    assert server.hits["/jwks.json"] == 2


def test_a_key_removed_from_the_url_stops_working_after_the_cache_lifetime(server, post, loopback):
    loopback.JWKS_URL_CACHE_SECONDS = 1
    loopback.JWKS_URL_REFRESH_SECONDS = 1
    issued = _client(server.url())
    _issued(post(_signed(issued)))
    server.publish(jwks_of((rsa_key("rsa-2"), "rsa-2")))
    time.sleep(1.1)
    _refused(post(_signed(issued)), "not registered")
    assert server.hits["/jwks.json"] == 2


def test_a_failed_fetch_is_not_retried_on_every_request(server, post, loopback):
    loopback.JWKS_URL_REFRESH_SECONDS = 60
    issued = _client(server.url("missing.json"))
    for _ in range(3):
        _refused(post(_signed(issued)), "answered 404")
    assert server.hits["/missing.json"] == 1


def test_a_response_over_the_size_cap_is_refused(server, post):
    padding = "x" * MAX_JWKS_BYTES
    document = jwks_of((rsa_key(), "rsa-1")) | {"padding": padding}
    issued = _client(server.publish(document, "big.json"))
    _refused(post(_signed(issued)), "larger than")


def test_a_response_without_a_length_is_cut_at_the_cap(server, post):
    document = jwks_of((rsa_key(), "rsa-1")) | {"padding": "x" * MAX_JWKS_BYTES}
    server.publish(document, "big.json")
    issued = _client(server.url("unsized/big.json"))
    _refused(post(_signed(issued)), "larger than")
    # The same route with a small body is fine: the cap is what refused.
    small = _client(server.url("unsized/jwks.json"))
    _issued(post(_signed(small)))


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"<html>not json</html>", "did not answer JSON"),
        (b"\xff\xfe\x00garbage", "did not answer JSON"),
        (b'["keys"]', "no 'keys' array"),
        (b'{"keys": {"kid": "rsa-1"}}', "no 'keys' array"),
        (b'{"jwks": []}', "no 'keys' array"),
    ],
)
def test_a_response_that_is_not_a_jwks_is_refused(server, post, body, fragment):
    issued = _client(server.publish(body, "bad.json"))
    _refused(post(_signed(issued)), fragment)


def test_a_published_private_key_is_not_used(server, post):
    private = json.loads(RSAAlgorithm.to_jwk(rsa_key("leaky"))) | {"kid": "leaky"}
    issued = _client(server.publish({"keys": [private]}, "leaky.json"))
    _refused(post(_signed(issued, "leaky", rsa_key("leaky"))), "private key material")


def test_a_redirect_is_not_followed(server, post):
    issued = _client(server.url("redirect/jwks.json"))
    _refused(post(_signed(issued)), "redirects are not followed")
    assert server.hits["/jwks.json"] == 0


def test_a_server_slower_than_the_read_timeout_is_refused_in_time(server, post):
    issued = _client(server.url("slow/jwks.json"))
    started = time.monotonic()
    _refused(post(_signed(issued)), "did not answer in time")
    assert time.monotonic() - started < server.delay_seconds


def test_a_closed_port_is_refused(server, post):
    issued = _client(f"http://127.0.0.1:{free_port()}/jwks.json")
    _refused(post(_signed(issued)), "could not be read")


def test_a_loopback_url_is_refused_at_fetch_once_the_switch_is_off(server, post, loopback):
    # A name is resolved when fetching: registered while allowed, refused once not.
    issued = _client(server.url().replace("http://127.0.0.1", "https://localhost"))
    loopback.JWKS_URL_ALLOW_LOOPBACK_HTTP = False
    _refused(post(_signed(issued)), "resolves to a loopback address")
    assert sum(server.hits.values()) == 0


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://jwks.partner.example/keys", "must use https"),
        ("ftp://jwks.partner.example/keys", "must use https"),
        ("https://10.1.2.3/jwks.json", "private"),
        ("https://192.168.0.10/jwks.json", "private"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://224.0.1.1/jwks.json", "multicast"),
        ("https://240.0.0.1/jwks.json", "reserved"),
        ("https://0.0.0.0/jwks.json", "private"),
        ("https://[fe80::1]/jwks.json", "link-local"),
        ("https://[::ffff:10.0.0.1]/jwks.json", "private"),
        ("https://127.0.0.1/jwks.json", "loopback"),
        ("https://[::1]/jwks.json", "loopback"),
        ("https://user:pw@jwks.partner.example/keys", "credentials"),
        ("https://jwks.partner.example/keys#frag", "fragment"),
        ("https:///jwks.json", "host"),
        ("https://jwks.partner.example:99999/keys", "not a URL"),
        ("https://jwks.partner.example/" + "k" * 500, "at most 500"),
    ],
)
def test_a_bad_jwks_url_is_refused_at_registration_and_changes_nothing(cast, url, fragment):
    before = ApiClient.objects.count()
    with pytest.raises(ProvisioningError, match=fragment):
        _client(url)
    assert ApiClient.objects.count() == before


def test_http_is_allowed_only_to_loopback_and_only_with_the_switch(loopback):
    assert jwks_url_clean("http://127.0.0.1:8123/jwks.json")
    assert jwks_url_clean("http://localhost:8123/jwks.json")
    assert jwks_url_clean("http://[::1]:8123/jwks.json")
    with pytest.raises(ProvisioningError, match="https"):
        jwks_url_clean("http://jwks.partner.example/keys")
    with pytest.raises(ProvisioningError, match="private"):
        jwks_url_clean("https://10.0.0.1/keys")
    loopback.JWKS_URL_ALLOW_LOOPBACK_HTTP = False
    with pytest.raises(ProvisioningError, match="https"):
        jwks_url_clean("http://127.0.0.1:8123/jwks.json")
    assert jwks_url_clean("https://jwks.partner.example/keys") == (
        "https://jwks.partner.example/keys"
    )


def test_a_key_only_client_keeps_a_way_to_authenticate(cast):
    issued = _client("https://jwks.partner.example/keys")
    with pytest.raises(ProvisioningError, match="needs a secret or a JWKS"):
        client_update(client=issued.client, jwks_url="")
    assert ApiClient.objects.get(pk=issued.client.pk).jwks_url == (
        "https://jwks.partner.example/keys"
    )
    with pytest.raises(ProvisioningError, match="needs a secret or a JWKS"):
        client_create(
            partner_name="Keyless",
            tenant_slugs=["provider-a"],
            scopes="system/Patient.rs",
            with_secret=False,
        )
    # Registered keys may replace the URL in one change.
    keys = jwks_of((rsa_key(), "rsa-1"))
    client_update(client=issued.client, jwks_url="", jwks=keys)
    changed = ApiClient.objects.get(pk=issued.client.pk)
    assert (changed.jwks_url, changed.jwks) == ("", keys)


def test_create_client_registers_a_jwks_url(cast, loopback):
    out = StringIO()
    url = "https://jwks.partner.example/.well-known/jwks.json"
    call_command(
        "create_client",
        *["--partner", f"Cmd Partner {uuid.uuid4().hex[:8]}", "--tenant", "provider-a"],
        *["--scope", "system/Patient.rs", "--jwks-url", url, "--no-secret", "--json"],
        stdout=out,
    )
    result = json.loads(out.getvalue())
    assert result["jwks_url"] == url
    assert result["auth_methods"] == ["private_key_jwt"]
    assert result["client_secret"] is None
    assert ApiClient.objects.get(client_id=result["client_id"]).jwks_url == url


def test_create_client_refuses_a_private_jwks_url_and_creates_nothing(cast):
    before = ApiClient.objects.count()
    with pytest.raises(CommandError, match="private"):
        call_command(
            "create_client",
            *["--partner", "Cmd Partner private", "--tenant", "provider-a"],
            *["--scope", "system/Patient.rs", "--jwks-url", "https://10.0.0.5/jwks.json"],
            stdout=StringIO(),
        )
    assert ApiClient.objects.count() == before


def test_the_admin_sets_a_jwks_url_and_refuses_a_private_one(cast):
    issued = client_create(
        partner_name=f"Admin Jku {uuid.uuid4().hex[:8]}",
        tenant_slugs=["provider-a"],
        scopes="system/Patient.rs",
    )
    browser = operator_browser(f"ops-jku-{uuid.uuid4().hex[:6]}")
    url = f"/admin/tenants/apiclient/{issued.client.pk}/change/"
    page = browser.get(url)
    assert b"JWKS URL" in page.content
    data = change_form_data(page)

    refused = browser.post(url, data | {"jwks_url": "https://169.254.169.254/keys"})
    assert "link-local" in form_errors(refused)
    assert ApiClient.objects.get(pk=issued.client.pk).jwks_url == ""

    good = "https://jwks.partner.example/keys"
    assert browser.post(url, data | {"jwks_url": good}).status_code == 302
    assert ApiClient.objects.get(pk=issued.client.pk).jwks_url == good


def test_the_admin_lets_a_key_only_client_swap_its_keys_for_a_url(cast):
    issued = _client("", jwks=jwks_of((rsa_key(), "rsa-1")))
    browser = operator_browser(f"ops-jku-{uuid.uuid4().hex[:6]}")
    url = f"/admin/tenants/apiclient/{issued.client.pk}/change/"
    data = change_form_data(browser.get(url))
    good = "https://jwks.partner.example/keys"
    assert browser.post(url, data | {"jwks": "", "jwks_url": good}).status_code == 302
    changed = ApiClient.objects.get(pk=issued.client.pk)
    assert (changed.jwks, changed.jwks_url) == (None, good)
    # Neither keys nor URL is refused and leaves the client as it was.
    data = change_form_data(browser.get(url))
    assert "needs a secret or a JWKS" in form_errors(
        browser.post(url, data | {"jwks": "", "jwks_url": ""})
    )
    assert ApiClient.objects.get(pk=issued.client.pk).jwks_url == good


def _self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for `name` and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def https_server(tmp_path: Path, loopback) -> Iterator[tuple[JwksServer, Path]]:
    certificates = tmp_path / "tls"
    certificates.mkdir()
    served_folder = tmp_path / "served"
    served_folder.mkdir()
    tls = _self_signed(certificates, "localhost")
    jwks_url_cache_clear()
    with jwks_server(served_folder, tls=tls) as served:
        served.publish(jwks_of((rsa_key(), "rsa-1")))
        yield served, tls[0]
    jwks_url_cache_clear()


def test_an_https_url_is_fetched_with_a_verified_certificate(https_server, post, monkeypatch):
    served, certificate = https_server
    issued = _client(served.url())
    # Not signed by a trusted authority: refused, and nothing is read.
    _refused(post(_signed(issued)), "SSLError")
    jwks_url_cache_clear()
    # Trusted (the process's CA file), the same server verifies the client.
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate))
    _issued(post(_signed(issued, jku=served.url())))
    assert served.hits["/jwks.json"] == 1


def test_a_certificate_for_another_name_is_refused(tmp_path, loopback, post, monkeypatch):
    other = _self_signed(tmp_path, "jwks.partner.example")
    monkeypatch.setenv("SSL_CERT_FILE", str(other[0]))
    jwks_url_cache_clear()
    with jwks_server(tmp_path, tls=other) as served:
        served.publish(jwks_of((rsa_key(), "rsa-1")))
        issued = _client(served.url())
        _refused(post(_signed(issued)), "SSLError")
    jwks_url_cache_clear()
