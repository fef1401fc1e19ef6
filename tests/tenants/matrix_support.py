"""The negative matrix's cast: every FHIR interaction as a request, the two patients it
guards, and one way of being a wrong caller per negative case."""

import json
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.urls import Resolver404, resolve
from django.utils import timezone

from fhirplatform.fhir.models import Resource
from fhirplatform.fhir.operations.views import UnknownOperationView
from fhirplatform.fhir.services import resource_create
from fhirplatform.schemas import tenant_schema
from tenants.models import AccessToken, Grant, Tenant, TenantStatus
from tenants.scopes import Interaction, scopes_parse
from tenants.selectors import token_endpoint_url
from tenants.services import (
    client_create,
    client_revoke,
    credential_hash,
    grant_revoke,
    tenant_set_status,
    token_issue,
    token_revoke,
)
from tests.tenants.identity_support import assertion, rsa_key, unsigned_assertion

MARK_A = "Alphamatrixsecret"
MARK_B = "Bravomatrixsecret"


@dataclass(frozen=True)
class Call:
    """One FHIR interaction as an HTTP request; `{t}` is the tenant, `{id}` the patient."""

    interaction: Interaction
    resource_type: str
    method: str
    path: str
    body: Any = None
    content_type: str = "application/fhir+json"
    headers: tuple[tuple[str, str], ...] = ()  # what the interaction itself needs sent


CALLS = {
    "read": Call(Interaction.READ, "Patient", "GET", "/fhir/{t}/Patient/{id}"),
    "vread": Call(Interaction.VREAD, "Patient", "GET", "/fhir/{t}/Patient/{id}/_history/1"),
    "search": Call(Interaction.SEARCH, "Patient", "GET", "/fhir/{t}/Patient?_id={id}"),
    "search-post": Call(
        Interaction.SEARCH,
        "Patient",
        "POST",
        "/fhir/{t}/Patient/_search",
        "_id={id}",
        "application/x-www-form-urlencoded",
    ),
    "history-instance": Call(
        Interaction.HISTORY_INSTANCE, "Patient", "GET", "/fhir/{t}/Patient/{id}/_history"
    ),
    "history-type": Call(Interaction.HISTORY_TYPE, "Patient", "GET", "/fhir/{t}/Patient/_history"),
    "history-system": Call(Interaction.HISTORY_SYSTEM, "*", "GET", "/fhir/{t}/_history"),
    "create": Call(
        Interaction.CREATE,
        "Patient",
        "POST",
        "/fhir/{t}/Patient",
        {"resourceType": "Patient", "name": [{"family": "Intruder"}]},
    ),
    "update": Call(
        Interaction.UPDATE,
        "Patient",
        "PUT",
        "/fhir/{t}/Patient/{id}",
        {"resourceType": "Patient", "id": "{id}", "name": [{"family": "Intruder"}]},
    ),
    "patch": Call(
        Interaction.PATCH,
        "Patient",
        "PATCH",
        "/fhir/{t}/Patient/{id}",
        [{"op": "replace", "path": "/active", "value": False}],
        "application/json-patch+json",
    ),
    "delete": Call(Interaction.DELETE, "Patient", "DELETE", "/fhir/{t}/Patient/{id}"),
    "export": Call(
        Interaction.EXPORT, "*", "GET", "/fhir/{t}/$export", headers=(("Prefer", "respond-async"),)
    ),
}


@dataclass(frozen=True)
class World:
    cast: Any
    patient_a: str
    patient_b: str


def store_patient(tenant: Tenant, family: str) -> str:
    with tenant_schema(tenant):
        content = {"resourceType": "Patient", "active": True, "name": [{"family": family}]}
        return resource_create(
            resource_type="Patient", content=content, source="urn:test:matrix"
        ).logical_id


def fill(text: str, tenant: str, logical_id: str) -> str:
    return text.replace("{t}", tenant).replace("{id}", logical_id)


def send(
    client,
    call: Call,
    *,
    tenant: str,
    logical_id: str,
    authorization: str | None,
    headers: dict[str, str] | None = None,
):
    path = fill(call.path, tenant, logical_id)
    headers = dict(call.headers) | dict(headers or {})
    if authorization is not None:
        headers["Authorization"] = authorization
    kwargs: dict[str, Any] = {"headers": headers}
    if call.body is not None:
        body = call.body if isinstance(call.body, str) else json.dumps(call.body)
        kwargs.update(data=fill(body, tenant, logical_id), content_type=call.content_type)
    return getattr(client, call.method.lower())(path, **kwargs)


def route_exists(call: Call) -> bool:
    """Whether the call's endpoint is built: its path resolves to a view of its own, not
    to the answer every operation not offered gets."""
    try:
        match = resolve(fill(call.path, "provider-a", "x").split("?")[0])
    except Resolver404:
        return False
    return getattr(match.func, "view_class", None) is not UnknownOperationView


def snapshot(world: World) -> tuple[Any, ...]:
    """Everything a refused request must leave as it was."""
    state = []
    for tenant in (world.cast.tenant_a, world.cast.tenant_b):
        with tenant_schema(tenant):
            state.append(
                (
                    Resource.objects.count(),
                    sorted(Resource.objects.values_list("logical_id", "version_id", "deleted")),
                )
            )
    return tuple(state)


def bearer(token: str) -> str:
    return f"Bearer {token}"


def fresh_client(scopes: str = "system/*.cruds"):
    return client_create(
        partner_name=f"Matrix {uuid.uuid4().hex[:8]}", tenant_slugs=["provider-a"], scopes=scopes
    )


def issue(grant: Grant, scopes: str | None = None) -> str:
    parsed = scopes_parse(scopes or grant.scopes)
    return token_issue(grant=grant, scopes=parsed, auth_method="test").access_token


def expired(world: World) -> str:
    token = world.cast.client_a.token()
    AccessToken.objects.filter(token_hash=credential_hash(token)).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    return bearer(token)


def revoked_token(world: World) -> str:
    token = world.cast.client_a.token()
    token_revoke(token=AccessToken.objects.get(token_hash=credential_hash(token)))
    return bearer(token)


def revoked_client(world: World) -> str:
    issued = fresh_client()
    token = issue(issued.grants[0])
    client_revoke(client=issued.client)
    return bearer(token)


def revoked_grant(world: World) -> str:
    issued = fresh_client()
    token = issue(issued.grants[0])
    grant_revoke(grant=issued.grants[0])
    return bearer(token)


def deleted_grant(world: World) -> str:
    issued = fresh_client()
    token = issue(issued.grants[0])
    issued.grants[0].delete()
    return bearer(token)


def suspended_tenant(world: World) -> str:
    token = world.cast.client_a.token()
    tenant_set_status(
        tenant=Tenant.objects.get(pk=world.cast.tenant_a.pk), status=TenantStatus.SUSPENDED
    )
    return bearer(token)


def alg_none_jwt(world: World) -> str:
    client_id = world.cast.client_a.client.client_id
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_endpoint_url(),
        "exp": int(time.time()) + 60,
        "jti": uuid.uuid4().hex,
        "tenant": "provider-a",
        "scope": "system/*.cruds",
    }
    return bearer(unsigned_assertion(claims, {"alg": "none", "typ": "JWT"}))


def signed_assertion_as_bearer(world: World) -> str:
    return bearer(assertion(world.cast.client_a.client.client_id, rsa_key(), "rsa-1"))
