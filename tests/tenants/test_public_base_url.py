"""The instance's public base URL (settings.PUBLIC_BASE_URL): PUBLIC_BASE_URL when set, else
http://localhost:$PORT, and what the provisioning commands print from it."""

import json
import subprocess
import sys
import uuid
from io import StringIO

import pytest
from django.core.management import call_command

from tests.conftest import ROOT
from tests.conftest import test_environment as subprocess_environment


def _environment(**env: str) -> dict[str, str]:
    """The test database and Redis, with neither PUBLIC_BASE_URL nor PORT unless given."""
    environment = subprocess_environment()
    environment.pop("PUBLIC_BASE_URL", None)
    environment.pop("PORT", None)
    return environment | env


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run manage.py as an operator would, on the test database."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=_environment(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _settings_value(name: str, **env: str) -> subprocess.CompletedProcess[str]:
    code = (
        f"import django; django.setup(); from django.conf import settings; print(settings.{name})"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=_environment(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "http://localhost:8000"),
        ({"PORT": "9137"}, "http://localhost:9137"),
        ({"PORT": "9137", "PUBLIC_BASE_URL": ""}, "http://localhost:9137"),
        (
            {"PORT": "9137", "PUBLIC_BASE_URL": "https://fhir.example.org/"},
            "https://fhir.example.org",
        ),
    ],
)
def test_the_public_base_url_defaults_from_port(env, expected):
    result = _settings_value("PUBLIC_BASE_URL", **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PORT": "eighty"}, "PORT='eighty' is not an integer"),
        ({"PUBLIC_BASE_URL": "fhir.example.org"}, "PUBLIC_BASE_URL must be an http"),
    ],
)
def test_a_bad_port_or_base_url_fails_loudly(env, message):
    result = _settings_value("PUBLIC_BASE_URL", **env)
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.usefixtures("committed")
def test_create_tenant_and_create_client_print_the_urls_of_the_port_in_use(unique_slug):
    created = _manage("create_tenant", unique_slug, "--name", "Port Clinic", "--json", PORT="9137")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["fhir_base_url"] == (
        f"http://localhost:9137/fhir/{unique_slug}"
    )
    client = _manage(
        *["create_client", "--partner", f"Port Partner {uuid.uuid4().hex[:8]}"],
        *["--tenant", unique_slug, "--scope", "system/Patient.rs", "--json"],
        PORT="9137",
    )
    assert client.returncode == 0, client.stderr
    result = json.loads(client.stdout)
    assert result["token_endpoint"] == "http://localhost:9137/oauth/token"
    assert result["grants"][0]["fhir_base_url"] == f"http://localhost:9137/fhir/{unique_slug}"


@pytest.mark.usefixtures("committed")
def test_the_commands_follow_the_setting_in_process(settings, unique_slug):
    settings.PUBLIC_BASE_URL = "https://fhir.example.org"
    out = StringIO()
    call_command("create_tenant", unique_slug, "--name", "Setting Clinic", "--json", stdout=out)
    assert json.loads(out.getvalue())["fhir_base_url"] == (
        f"https://fhir.example.org/fhir/{unique_slug}"
    )
    out = StringIO()
    call_command(
        *["create_client", "--partner", f"Setting Partner {uuid.uuid4().hex[:8]}"],
        *["--tenant", unique_slug, "--scope", "system/Patient.rs"],
        stdout=out,
    )
    assert "token endpoint: https://fhir.example.org/oauth/token" in out.getvalue()
    assert f"{unique_slug}: https://fhir.example.org/fhir/{unique_slug}" in out.getvalue()
