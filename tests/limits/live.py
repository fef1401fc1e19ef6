"""Real processes for the limit tests: a gunicorn of our own and a redis-server of our own."""

import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis
import requests

from scripts import loopback
from scripts.loopback import free_port
from tenants.models import ApiClient
from tenants.scopes import scopes_parse
from tenants.services import client_create, token_issue
from tests.conftest import test_environment
from tests.limits.conftest import plan_make


@contextmanager
def gunicorn(*, workers: int, threads: int, env: dict[str, str] | None = None) -> Iterator[str]:
    with loopback.gunicorn(
        env=test_environment() | (env or {}), workers=workers, threads=threads
    ) as base:
        yield base


class RedisServer:
    """A throwaway redis-server on its own port, so stopping it never touches the shared one."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis.from_url(self.url).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


def new_client(
    tenant_slug: str, scopes: str = "system/*.cruds", **plan: int
) -> tuple[ApiClient, str]:
    """A committed client with its own plan; returns (client, token)."""
    issued = client_create(
        partner_name="Live " + uuid.uuid4().hex[:8],
        tenant_slugs=[tenant_slug],
        scopes="system/*.cruds",
        plan_name=plan_make(**plan).name,
    )
    grant = issued.grants[0]
    token = token_issue(grant=grant, scopes=scopes_parse(scopes), auth_method="test").access_token
    return issued.client, token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}


def patient_create(base: str, tenant: str, token: str) -> str:
    response = requests.post(
        f"{base}/fhir/{tenant}/Patient",
        json={"resourceType": "Patient", "name": [{"family": "Limit"}]},
        headers=bearer(token) | {"Content-Type": "application/fhir+json"},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])
