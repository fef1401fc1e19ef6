"""A tenant of its own for the export tests, with generated data, and the client side of
the Bulk Data flow: kick-off, polling as Retry-After says, the manifest, the files."""

import json
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.test import Client

from fhirplatform.fhir.loading import fhir_generate
from fhirplatform.fhir.models import Resource
from fhirplatform.schemas import tenant_schema
from tenants.models import Grant, Tenant
from tenants.scopes import scopes_parse
from tenants.services import client_create, tenant_create, token_issue
from tests.fhir.rest_support import FhirClient, generous_limits

# Starts an export worker of the test's own with these environment variables (conftest.py).
StartWorker = Callable[[dict[str, str]], subprocess.Popen[bytes]]
ASYNC: dict[str, Any] = {"HTTP_PREFER": "respond-async", "HTTP_ACCEPT": "application/fhir+json"}


@dataclass
class ExportWorld:
    tenant: Tenant
    reader: Grant  # system/*.rs
    writer: FhirClient  # system/*.cruds, for Groups and Consents

    def token(self, grant: Grant | None = None, scopes: str | None = None) -> str:
        grant = grant or self.reader
        parsed = scopes_parse(scopes or grant.scopes)
        return token_issue(grant=grant, scopes=parsed, auth_method="test").access_token

    @property
    def base(self) -> str:
        return f"/fhir/{self.tenant.slug}"

    def another_client(self, name: str) -> Grant:
        """A client of a partner of its own, `system/*.rs` on the tenant, never throttled."""
        grant = client_create(
            partner_name=f"{name} {uuid.uuid4().hex[:6]}",
            tenant_slugs=[self.tenant.slug],
            scopes="system/*.rs",
        ).grants[0]
        generous_limits(grant)
        return grant

    def group(self, members: list[str]) -> dict[str, Any]:
        """A Group of these patients, created through the FHIR API."""
        return self.created(
            {
                "resourceType": "Group",
                "type": "person",
                "actual": True,
                "member": [{"entity": {"reference": f"Patient/{p}"}} for p in members],
            }
        )

    def created(self, resource: dict[str, Any]) -> dict[str, Any]:
        response = self.writer.post(resource["resourceType"], resource)
        assert response.status_code == 201, response.content
        body: dict[str, Any] = response.json()
        return body

    def stored_counts(self) -> dict[str, int]:
        with tenant_schema(self.tenant):
            counts: dict[str, int] = {}
            for resource_type in Resource.objects.filter(deleted=False).values_list(
                "resource_type", flat=True
            ):
                counts[resource_type] = counts.get(resource_type, 0) + 1
            return counts


def export_world(*, patients: int = 6, observations: int = 5) -> ExportWorld:
    unique = uuid.uuid4().hex[:8]
    slug = f"export-{unique}"
    tenant = tenant_create(slug=slug, name=f"Export {unique}")
    reader = client_create(
        partner_name=f"Exporters {unique}", tenant_slugs=[slug], scopes="system/*.rs"
    ).grants[0]
    writer = client_create(
        partner_name=f"Writers {unique}", tenant_slugs=[slug], scopes="system/*.cruds"
    ).grants[0]
    generous_limits(tenant, reader, writer)
    fhir_generate(tenant=tenant, patients=patients, observations_per_patient=observations)
    token = token_issue(grant=writer, scopes=scopes_parse(writer.scopes), auth_method="test")
    return ExportWorld(tenant=tenant, reader=reader, writer=FhirClient(slug, token.access_token))


def _auth(token: str) -> dict[str, Any]:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def kickoff(
    world: ExportWorld,
    token: str,
    path: str = "$export",
    params: dict[str, Any] | None = None,
    *,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Any:
    extra: dict[str, Any] = ASYNC | _auth(token) | (headers or {})
    url = f"{world.base}/{path}"
    if body is not None:
        return Client().post(url, json.dumps(body), content_type="application/fhir+json", **extra)
    return Client().get(url, params or {}, **extra)


def status_path(response: Any) -> str:
    """The status URL of a 202 kick-off, as a path on the test client's server."""
    assert response.status_code == 202, response.content
    location: str = response["Content-Location"]
    return location[location.index("/fhir/") :]


def poll(path: str, token: str) -> Any:
    return Client().get(path, **_auth(token))


def wait_done(path: str, token: str, seconds: float = 60) -> Any:
    """Poll as the answers' Retry-After says until the job is no longer running."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        response = poll(path, token)
        if response.status_code not in (202, 429):
            return response
        time.sleep(float(response["Retry-After"]))
    raise AssertionError(f"the export at {path} did not finish within {seconds} s")


def download(url: str, token: str, accept: str = "application/fhir+ndjson") -> Any:
    return Client().get(url[url.index("/fhir/") :], HTTP_ACCEPT=accept, **_auth(token))


def lines(response: Any) -> list[dict[str, Any]]:
    body = b"".join(response.streaming_content)
    return [json.loads(line) for line in body.decode().splitlines()]


def exported(manifest: dict[str, Any], token: str) -> dict[str, list[dict[str, Any]]]:
    """Every output file's resources, by type."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for output in manifest["output"]:
        response = download(output["url"], token)
        assert response.status_code == 200, response
        resources = lines(response)
        assert len(resources) == output["count"]
        assert all(r["resourceType"] == output["type"] for r in resources)
        by_type.setdefault(output["type"], []).extend(resources)
    return by_type


def run_export(world: ExportWorld, token: str, path: str = "$export", **kwargs: Any) -> Any:
    """Kick off, wait, and return the manifest."""
    done = wait_done(status_path(kickoff(world, token, path, **kwargs)), token)
    assert done.status_code == 200, done.content
    return done.json()
