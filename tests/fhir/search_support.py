"""Helpers for the search tests: write resources straight into a tenant's store with
their index rows, and call the search selector as a given client."""

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from fhirplatform.fhir.models import Resource
from fhirplatform.fhir.search.selectors import search_bundle
from fhirplatform.fhir.search.services import index_resource, index_resources
from fhirplatform.schemas import schema_activate, schema_public
from tenants.models import Tenant
from tenants.scopes import scopes_parse
from tenants.tokens import Caller
from tests.fhir.rest_support import TAG_SYSTEM

BASE = "http://testserver/fhir/provider-a"


def caller_for(cast_client: Any, tenant: Tenant, scopes: str | None = None) -> Caller:
    return Caller(
        tenant=tenant,
        client=cast_client.client,
        grant=cast_client.grant,
        scopes=scopes_parse(scopes or cast_client.grant.scopes),
        token_id="test",
    )


def stored(
    resource_type: str,
    content: dict[str, Any],
    *,
    when: datetime | None = None,
    logical_id: str | None = None,
    index: bool = True,
    tag: str | None = None,
) -> Resource:
    """A version-1 resource in the current tenant schema, indexed unless told otherwise."""
    logical_id = logical_id or str(uuid.uuid4())
    when = when or datetime.now(UTC)
    body = {
        "resourceType": resource_type,
        "id": logical_id,
        **content,
        "meta": {"versionId": "1", "lastUpdated": when.isoformat().replace("+00:00", "Z")},
    }
    if tag:  # lets a test's queries see only its own resources
        body["meta"]["tag"] = [{"system": TAG_SYSTEM, "code": tag}]
    resource = Resource.objects.create(
        resource_type=resource_type,
        logical_id=logical_id,
        version_id=1,
        last_updated=when,
        content=body,
    )
    if index:
        index_resource(resource=resource)
    return resource


def stored_many(resource_type: str, contents: list[dict[str, Any]]) -> list[Resource]:
    start = datetime.now(UTC)
    rows = []
    for number, content in enumerate(contents):
        logical_id = str(uuid.uuid4())
        when = start + timedelta(milliseconds=number)
        rows.append(
            Resource(
                resource_type=resource_type,
                logical_id=logical_id,
                version_id=1,
                last_updated=when,
                content={"resourceType": resource_type, "id": logical_id, **content},
            )
        )
    created = Resource.objects.bulk_create(rows)
    index_resources(resources=created)
    return created


@pytest.fixture(autouse=True)
def public_schema_after() -> Iterator[None]:
    """Tests switch the connection into tenant schemas; leave it on public for the next."""
    yield
    schema_public()


def in_tenant(tenant: Tenant) -> None:
    schema_activate(tenant)


def search(
    caller: Caller,
    resource_type: str | None,
    query: str | list[tuple[str, str]],
    strict: bool = False,
) -> dict[str, Any]:
    params = parse_qsl(query, keep_blank_values=True) if isinstance(query, str) else query
    return search_bundle(
        caller=caller,
        resource_type=resource_type,
        params=params,
        base_url=BASE,
        strict=strict,
        consent=None,  # the search engine alone; consent is tested in tests/consent
    )


def ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def link(bundle: dict[str, Any], relation: str) -> str | None:
    return next((li["url"] for li in bundle.get("link", []) if li["relation"] == relation), None)


def follow(caller: Caller, resource_type: str | None, url: str) -> dict[str, Any]:
    return search(caller, resource_type, parse_qsl(urlsplit(url).query, keep_blank_values=True))
