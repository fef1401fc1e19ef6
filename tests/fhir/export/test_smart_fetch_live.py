"""The PyPI Bulk Data client smart-fetch against a real server and worker: discovery,
SMART Backend Services with a private key (it names no tenant in its token request,
asks for 21 types at once, and is granted the permitted subset), kick-off, polling,
downloads, and its DELETE of the finished job."""

import hashlib
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from jwt.algorithms import RSAAlgorithm

from fhirplatform.fhir.export.models import ExportJob, ExportStatus
from fhirplatform.schemas import tenant_schema
from tenants.services import client_create
from tests import conftest as session
from tests.conftest import Cast
from tests.fhir.export.export_support import export_world
from tests.fhir.rest_support import generous_limits
from tests.tenants.identity_support import jwks_of, rsa_key

pytestmark = pytest.mark.live

CLIENT_PINS = session.ROOT / "tests" / "clients" / "smart-fetch.txt"
# The patient-data types smart-fetch exports (smart_fetch/resources.py PATIENT_TYPES) that
# the generated tenant holds.
EXPORTED = {"Patient", "Encounter", "Condition", "MedicationRequest", "Observation"}


@pytest.fixture(scope="session")
def smart_fetch() -> Path:
    """smart-fetch, installed once into a venv of its own from its pinned versions."""
    venv = session.ROOT / ".data" / "clients" / "smart-fetch"
    pins = hashlib.sha256(CLIENT_PINS.read_bytes()).hexdigest()[:12]
    stamp = venv / f"installed-{pins}"
    executable = venv / "bin" / "smart-fetch"
    if not stamp.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "-r", str(CLIENT_PINS)], check=True, timeout=900)
        stamp.touch()
    return executable


def _private_jwks(key: Any, kid: str, path: Path) -> Path:
    jwk = json.loads(RSAAlgorithm.to_jwk(key))
    jwk.update(kid=kid, alg="RS384", key_ops=["sign"])
    path.write_text(json.dumps({"keys": [jwk]}))
    return path


def test_smart_fetch_downloads_a_full_system_export(
    smart_fetch: Path,
    live_server_url: str,
    celery_worker_process: Any,
    committed: None,
    cast: Cast,
    tmp_path: Path,
) -> None:
    world = export_world(patients=5, observations=4)
    key = rsa_key("smart-fetch")
    kid = f"sf-{uuid.uuid4().hex[:6]}"
    # Grants on two tenants: only the tenant's own token endpoint tells them apart.
    issued = client_create(
        partner_name=f"Bulk Client {uuid.uuid4().hex[:6]}",
        tenant_slugs=[world.tenant.slug, cast.tenant_b.slug],
        scopes="system/*.rs",
        jwks=jwks_of((key, kid)),
    )
    generous_limits(*issued.grants)
    out = tmp_path / "export"
    run = subprocess.run(
        [
            str(smart_fetch),
            "bulk",
            str(out),
            "--fhir-url",
            f"{live_server_url}/fhir/{world.tenant.slug}",
            "--smart-client-id",
            issued.client.client_id,
            "--smart-key",
            str(_private_jwks(key, kid, tmp_path / "key.jwks")),
            "--no-default-filters",
            "--no-compression",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    downloaded: dict[str, int] = {}
    for file in out.glob("*.ndjson"):
        if file.name == "log.ndjson":
            continue
        resources = [json.loads(line) for line in file.read_text().splitlines()]
        for resource in resources:
            downloaded[resource["resourceType"]] = downloaded.get(resource["resourceType"], 0) + 1
    stored = world.stored_counts()
    assert downloaded == {t: n for t, n in stored.items() if t in EXPORTED}
    with tenant_schema(world.tenant):  # smart-fetch deletes the job once it has the files
        assert list(ExportJob.objects.values_list("status", flat=True)) == [ExportStatus.CANCELLED]
