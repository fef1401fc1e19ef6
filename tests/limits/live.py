"""Real processes for the limit tests: a gunicorn of our own (the redis-server of their own is
tests/redis_support.py)."""

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import requests

from scripts import loopback
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
