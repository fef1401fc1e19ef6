"""Provisioning commands: the happy path, and bad input that must change nothing."""

import json
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.db import connection

from tenants.models import ApiClient, ClientSecret, Domain, Grant, Partner, Tenant
from tenants.services import credential_hash


def _run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def _schemas() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT schema_name FROM information_schema.schemata")
        return {row[0] for row in cursor.fetchall()}


def _counts() -> dict[str, int]:
    return {
        model.__name__: model.objects.count()
        for model in (Tenant, Domain, Partner, ApiClient, ClientSecret, Grant)
    } | {"schemas": len(_schemas())}


@pytest.mark.usefixtures("committed")
class TestCreateTenant:
    def test_creates_a_migrated_schema_and_prints_its_fhir_base(self, unique_slug):
        result = json.loads(_run("create_tenant", unique_slug, "--name", "Clinic", "--json"))
        tenant = Tenant.objects.get(slug=unique_slug)
        assert result["schema"] == tenant.schema_name == f"t_{unique_slug}"
        assert result["fhir_base_url"].endswith(f"/fhir/{unique_slug}")
        assert result["plan"] == "standard"
        assert Domain.objects.get(tenant=tenant).domain == unique_slug
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM information_schema.tables "
                "WHERE table_schema = %s AND table_name = 'fhir_resource'",
                [tenant.schema_name],
            )
            assert cursor.fetchone()[0] == 1

    def test_plan_option(self, unique_slug):
        _run("create_tenant", unique_slug, "--name", "Trial", "--plan", "sandbox")
        assert Tenant.objects.get(slug=unique_slug).plan.name == "sandbox"

    @pytest.mark.parametrize(
        ("slug", "extra", "message"),
        [
            ("Bad_Slug", [], "invalid slug"),
            ("ab", [], "invalid slug"),
            ("9leading", [], "invalid slug"),
            ("public", [], "reserved"),
            ("provider-a", [], "already exists"),
            ("fine-slug", ["--plan", "platinum"], "unknown plan"),
        ],
    )
    def test_bad_input_is_refused_and_changes_nothing(self, cast, slug, extra, message):
        before = _counts()
        with pytest.raises(CommandError, match=message):
            _run("create_tenant", slug, "--name", "X", *extra)
        assert _counts() == before

    def test_blank_name_is_refused(self, unique_slug):
        before = _counts()
        with pytest.raises(CommandError, match="name"):
            _run("create_tenant", unique_slug, "--name", "   ")
        assert _counts() == before


@pytest.mark.usefixtures("committed")
class TestCreateClient:
    def test_prints_credentials_and_each_granted_tenants_fhir_base(self, cast):
        result = json.loads(
            _run(
                "create_client",
                "--partner",
                "Newco",
                "--tenant",
                "provider-a",
                "--tenant",
                "payer-b",
                "--scope",
                "system/Patient.rs system/Observation.read",
                "--json",
            )
        )
        client = ApiClient.objects.get(client_id=result["client_id"])
        assert client.partner.name == "Newco"
        assert client.secrets.get().secret_hash == credential_hash(result["client_secret"])
        assert result["token_endpoint"].endswith("/oauth/token")
        bases = {grant["tenant"]: grant["fhir_base_url"] for grant in result["grants"]}
        assert set(bases) == {"provider-a", "payer-b"}
        assert bases["payer-b"].endswith("/fhir/payer-b")
        assert {g.scopes for g in client.grants.all()} == {
            "system/Patient.rs system/Observation.read"
        }

    def test_registers_a_jwks_for_private_key_jwt(self, cast, tmp_path: Path):
        jwks = {"keys": [{"kty": "EC", "crv": "P-384", "x": "abc", "y": "def", "kid": "k1"}]}
        path = tmp_path / "jwks.json"
        path.write_text(json.dumps(jwks))
        result = json.loads(
            _run(
                "create_client",
                "--partner",
                "Keyco",
                "--tenant",
                "provider-a",
                "--scope",
                "system/*.rs",
                "--jwks",
                str(path),
                "--no-secret",
                "--json",
            )
        )
        assert result["client_secret"] is None
        assert result["auth_methods"] == ["private_key_jwt"]
        assert ApiClient.objects.get(client_id=result["client_id"]).jwks == jwks

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--tenant", "nowhere", "--scope", "system/*.rs"], "unknown tenant"),
            (
                ["--tenant", "provider-a", "--tenant", "nowhere", "--scope", "system/*.rs"],
                "unknown tenant",
            ),
            (["--tenant", "provider-a", "--scope", "system/Patient.fly"], "permissions"),
            (["--tenant", "provider-a", "--scope", "system/Spaceship.rs"], "unknown resource type"),
            (
                ["--tenant", "provider-a", "--scope", "patient/Patient.rs"],
                "not a SMART system scope",
            ),
            (["--tenant", "provider-a", "--scope", "system/Patient.sr"], "permissions"),
            (["--tenant", "provider-a", "--scope", "  "], "at least one scope"),
            (
                ["--tenant", "provider-a", "--scope", "system/*.rs", "--plan", "gold"],
                "unknown plan",
            ),
        ],
    )
    def test_bad_input_is_refused_and_changes_nothing(self, cast, args, message):
        before = _counts()
        with pytest.raises(CommandError, match=message):
            _run("create_client", "--partner", "Brand New Partner", *args)
        assert _counts() == before

    @pytest.mark.parametrize(
        ("jwks", "message"),
        [
            ({"keys": []}, "non-empty"),
            ({"keys": [{"kty": "oct", "k": "secret", "kid": "a"}]}, "kty"),
            (
                {"keys": [{"kty": "RSA", "n": "x", "e": "AQAB", "d": "private", "kid": "a"}]},
                "private key material",
            ),
            ({"keys": [{"kty": "RSA", "n": "x", "e": "AQAB"}]}, "kid"),
        ],
    )
    def test_bad_jwks_is_refused_and_changes_nothing(self, cast, tmp_path, jwks, message):
        path = tmp_path / "jwks.json"
        path.write_text(json.dumps(jwks))
        before = _counts()
        with pytest.raises(CommandError, match=message):
            _run(
                "create_client",
                "--partner",
                "P",
                "--tenant",
                "provider-a",
                "--scope",
                "system/*.rs",
                "--jwks",
                str(path),
            )
        assert _counts() == before

    def test_unreadable_jwks_file(self, cast, tmp_path):
        before = _counts()
        with pytest.raises(CommandError, match="cannot read JWKS"):
            _run(
                "create_client",
                "--partner",
                "P",
                "--tenant",
                "provider-a",
                "--scope",
                "system/*.rs",
                "--jwks",
                str(tmp_path / "missing.json"),
            )
        assert _counts() == before


@pytest.mark.usefixtures("committed")
def test_seed_demo_is_idempotent_and_prints_what_it_made(cast, settings, tmp_path):
    # A fresh checkout has no data folder yet: the demo makes it.
    settings.DEMO_CREDENTIALS_FILE = str(tmp_path / "not-made-yet" / "demo.json")
    first = json.loads(_run("seed_demo", "--json", "--patients", "0"))
    counts = _counts()
    second = json.loads(_run("seed_demo", "--json", "--patients", "0"))
    assert _counts() == counts
    assert first["clients"] == second["clients"]
    assert set(first["tenants"]) == {"demo-provider", "demo-payer", "sandbox"}
    assert Tenant.objects.get(slug="sandbox").plan.name == "sandbox"
    assert {"operator", "auditor", "acme-dev"} <= set(first["users"])
    auditor = User.objects.get(username="auditor")
    assert auditor.has_perm("limits.view_throttleevent") and auditor.has_perm("tenants.view_tenant")
    assert not any(
        p.split(".")[1].startswith(("add_", "change_", "delete_"))
        for p in auditor.get_all_permissions()
    )
    methods = {client["auth_method"] for client in first["clients"]}
    assert methods == {"client_secret_basic", "private_key_jwt"}
    key_client = next(c for c in first["clients"] if c["auth_method"] == "private_key_jwt")
    key_file = Path(key_client["private_key_file"])
    assert key_file.read_text().startswith("-----BEGIN PRIVATE KEY")
    for private in (key_file, Path(settings.DEMO_CREDENTIALS_FILE)):
        assert private.stat().st_mode & 0o777 == 0o600
    partner = Partner.objects.get(name="Acme Health Apps")
    assert "acme-dev" in set(partner.members.values_list("username", flat=True))


@pytest.mark.usefixtures("committed")
def test_seed_demo_repairs_credentials_that_no_longer_work(cast, settings, tmp_path):
    from django.contrib.auth import authenticate

    from tenants.models import ClientSecret

    settings.DEMO_CREDENTIALS_FILE = str(tmp_path / "demo.json")
    first = json.loads(_run("seed_demo", "--json", "--patients", "0"))
    # Another checkout sharing this database reset the operator and rotated the secret.
    operator = User.objects.get(username="operator")
    operator.set_password("changed-elsewhere")
    operator.save()
    secret_client = next(c for c in first["clients"] if c.get("client_secret"))
    ClientSecret.objects.filter(client__client_id=secret_client["client_id"]).delete()

    second = json.loads(_run("seed_demo", "--json", "--patients", "0"))
    assert authenticate(username="operator", password=second["users"]["operator"])
    repaired = next(c for c in second["clients"] if c["name"] == secret_client["name"])
    client = ApiClient.objects.get(client_id=repaired["client_id"])
    assert client.secrets.filter(secret_hash=credential_hash(repaired["client_secret"])).exists()
