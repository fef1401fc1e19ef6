"""The negative matrix: every FHIR interaction against every way a caller can be wrong.

Each case must get its documented status and an OperationOutcome, leak nothing of
either tenant, and change nothing. The 404 for another tenant's token, an unknown
tenant and a missing resource is one body, byte for byte.
"""

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.urls import Resolver404, resolve
from django.utils import timezone

from fhirplatform.fhir.models import Resource
from fhirplatform.schemas import tenant_schema
from tenants.models import AccessToken, Tenant, TenantStatus
from tenants.scopes import Interaction, required_scope_text
from tenants.selectors import token_endpoint_url
from tenants.services import (
    client_create,
    client_revoke,
    grant_revoke,
    tenant_set_status,
    token_revoke,
)
from tests.fhir.rest_support import generous_plans_committed
from tests.tenants.identity_support import assertion, rsa_key, unsigned_assertion

pytestmark = pytest.mark.django_db

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
    "export": Call(Interaction.EXPORT, "*", "GET", "/fhir/{t}/$export"),
}


@dataclass(frozen=True)
class World:
    cast: Any
    patient_a: str
    patient_b: str


def _store_patient(tenant: Tenant, family: str) -> str:
    from fhirplatform.fhir.services import resource_create

    with tenant_schema(tenant):
        content = {"resourceType": "Patient", "active": True, "name": [{"family": family}]}
        return resource_create(
            resource_type="Patient", content=content, source="urn:test:matrix"
        ).logical_id


@pytest.fixture(scope="module")
def world(cast, django_db_blocker) -> Iterator[World]:
    """One committed patient per tenant for the module, removed afterwards (others count rows).

    The cast is on generous plans: a wrong-tenant request is charged to the caller's own
    quota, and the matrix sends hundreds of them within seconds."""
    with generous_plans_committed(cast, django_db_blocker):
        with django_db_blocker.unblock():
            built = World(
                cast=cast,
                patient_a=_store_patient(cast.tenant_a, MARK_A),
                patient_b=_store_patient(cast.tenant_b, MARK_B),
            )
        yield built
        with django_db_blocker.unblock():
            for tenant, logical_id in (
                (cast.tenant_a, built.patient_a),
                (cast.tenant_b, built.patient_b),
            ):
                with tenant_schema(tenant):
                    Resource.objects.filter(resource_type="Patient", logical_id=logical_id).delete()


def _fill(text: str, tenant: str, logical_id: str) -> str:
    return text.replace("{t}", tenant).replace("{id}", logical_id)


def _send(
    client,
    call: Call,
    *,
    tenant: str,
    logical_id: str,
    authorization: str | None,
    headers: dict[str, str] | None = None,
):
    path = _fill(call.path, tenant, logical_id)
    headers = dict(headers or {})
    if authorization is not None:
        headers["Authorization"] = authorization
    kwargs: dict[str, Any] = {"headers": headers}
    if call.body is not None:
        body = call.body if isinstance(call.body, str) else json.dumps(call.body)
        kwargs.update(data=_fill(body, tenant, logical_id), content_type=call.content_type)
    return getattr(client, call.method.lower())(path, **kwargs)


def _route_exists(call: Call) -> bool:
    try:
        resolve(_fill(call.path, "provider-a", "x").split("?")[0])
    except Resolver404:
        return False
    return True


def _snapshot(world: World) -> tuple[Any, ...]:
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


# --- credentials, one per negative case ----------------------------------------------------


def _bearer(token: str) -> str:
    return f"Bearer {token}"


def _fresh_client(scopes: str = "system/*.cruds"):
    return client_create(
        partner_name=f"Matrix {uuid.uuid4().hex[:8]}", tenant_slugs=["provider-a"], scopes=scopes
    )


def _issue(grant, scopes: str | None = None) -> str:
    from tenants.scopes import scopes_parse
    from tenants.tokens import token_issue

    parsed = scopes_parse(scopes or grant.scopes)
    return token_issue(grant=grant, scopes=parsed, auth_method="test").access_token


def _expired(world: World) -> str:
    token = world.cast.client_a.token()
    AccessToken.objects.filter(issued_at__gte=timezone.now() - timedelta(seconds=5)).filter(
        client=world.cast.client_a.client
    ).update(expires_at=timezone.now() - timedelta(seconds=1))
    return _bearer(token)


def _revoked_token(world: World) -> str:
    token = world.cast.client_a.token()
    token_revoke(
        token=AccessToken.objects.filter(client=world.cast.client_a.client).latest("issued_at")
    )
    return _bearer(token)


def _revoked_client(world: World) -> str:
    issued = _fresh_client()
    token = _issue(issued.grants[0])
    client_revoke(client=issued.client)
    return _bearer(token)


def _revoked_grant(world: World) -> str:
    issued = _fresh_client()
    token = _issue(issued.grants[0])
    grant_revoke(grant=issued.grants[0])
    return _bearer(token)


def _deleted_grant(world: World) -> str:
    issued = _fresh_client()
    token = _issue(issued.grants[0])
    issued.grants[0].delete()
    return _bearer(token)


def _suspended_tenant(world: World) -> str:
    token = world.cast.client_a.token()
    tenant_set_status(
        tenant=Tenant.objects.get(pk=world.cast.tenant_a.pk), status=TenantStatus.SUSPENDED
    )
    return _bearer(token)


def _alg_none_jwt(world: World) -> str:
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
    return _bearer(unsigned_assertion(claims, {"alg": "none", "typ": "JWT"}))


def _signed_assertion_as_bearer(world: World) -> str:
    return _bearer(assertion(world.cast.client_a.client.client_id, rsa_key(), "rsa-1"))


@dataclass(frozen=True)
class Case:
    status: int
    code: str
    credentials: Callable[[World], str | None]
    headers: dict[str, str] | None = None


UNAUTHENTICATED = {
    "no-token": Case(401, "login", lambda w: None),
    "empty-bearer": Case(401, "login", lambda w: "Bearer "),
    "basic-scheme": Case(401, "login", lambda w: "Basic dXNlcjpwYXNz"),
    "oversized-token": Case(401, "login", lambda w: "Bearer " + "x" * 600),
    "garbage-token": Case(401, "login", lambda w: "Bearer \u00e9\u00e9 not a token"),
    "unknown-token": Case(401, "login", lambda w: _bearer(uuid.uuid4().hex * 2)),
    "expired-token": Case(401, "expired", _expired),
    "revoked-token": Case(401, "login", _revoked_token),
    "deleted-grant": Case(401, "login", _deleted_grant),
    "alg-none-jwt": Case(401, "login", _alg_none_jwt),
    "client-assertion-as-token": Case(401, "login", _signed_assertion_as_bearer),
    "revoked-client": Case(403, "suspended", _revoked_client),
    "revoked-grant": Case(403, "suspended", _revoked_grant),
    "suspended-tenant": Case(403, "suspended", _suspended_tenant),
}

# Token of payer-b on provider-a's URL: whatever the headers claim, it is the shared 404.
FORGED = {
    "other-tenant-token": None,
    "forged-x-tenant-id": {"X-Tenant-ID": "payer-b"},
    "forged-x-forwarded-host": {"X-Forwarded-Host": "payer-b"},
    "forged-x-forwarded-prefix": {"X-Forwarded-Prefix": "/fhir/payer-b"},
    "forged-host": {"Host": "localhost"},
    "forged-all": {
        "X-Tenant-ID": "provider-a",
        "X-Forwarded-Host": "provider-a",
        "X-Forwarded-Prefix": "/fhir/provider-a",
        "Forwarded": "host=provider-a",
    },
}


def _require_route(call: Call) -> None:
    if not _route_exists(call):
        pytest.skip(f"{call.interaction} endpoint {call.path} is not built yet")


def _assert_outcome(response, status: int, code: str, world: World) -> dict[str, Any]:
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"].startswith("application/fhir+json")
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == code, outcome
    text = response.content.decode()
    for secret in (MARK_A, MARK_B, world.patient_a, world.patient_b):
        assert secret not in text
    return outcome


def _reference_404(client, world: World, call: Call):
    """What a missing resource looks like to an authorised caller of provider-a."""
    read = CALLS["read"]
    return _send(
        client,
        read,
        tenant="provider-a",
        logical_id="no-such-" + uuid.uuid4().hex[:8],
        authorization=_bearer(world.cast.client_a.token()),
    )


@pytest.mark.parametrize("case_name", list(UNAUTHENTICATED))
@pytest.mark.parametrize("call_name", list(CALLS))
def test_refused_caller_gets_its_status_and_nothing_else(client, world, call_name, case_name):
    call, case = CALLS[call_name], UNAUTHENTICATED[case_name]
    _require_route(call)
    before = _snapshot(world)
    response = _send(
        client,
        call,
        tenant="provider-a",
        logical_id=world.patient_a,
        authorization=case.credentials(world),
        headers=case.headers,
    )
    _assert_outcome(response, case.status, case.code, world)
    if case.status == 401:
        challenge = response["WWW-Authenticate"]
        assert challenge.startswith('Bearer realm="fhirplatform"')
        # RFC 6750: no credentials, no error code; bad credentials say which.
        assert ("error=" in challenge) == (case_name != "no-token")
    assert _snapshot(world) == before


@pytest.mark.parametrize("call_name", list(CALLS))
def test_scope_that_does_not_cover_the_interaction_is_403(client, world, call_name):
    call = CALLS[call_name]
    _require_route(call)
    letter_needed = required_scope_text(call.resource_type, call.interaction)
    other_letters = "".join(letter for letter in "cruds" if letter != letter_needed[-1])
    before = _snapshot(world)
    for scope in (f"system/Observation.{other_letters}", f"system/Patient.{other_letters}"):
        token = world.cast.client_a.token(scope)
        response = _send(
            client,
            call,
            tenant="provider-a",
            logical_id=world.patient_a,
            authorization=_bearer(token),
        )
        outcome = _assert_outcome(response, 403, "forbidden", world)
        assert letter_needed in outcome["issue"][0]["diagnostics"]
    assert _snapshot(world) == before


@pytest.mark.parametrize("case_name", list(FORGED))
@pytest.mark.parametrize("call_name", list(CALLS))
def test_other_tenants_token_gets_the_shared_404_whatever_the_headers(
    client, world, call_name, case_name
):
    """The other tenant cannot: payer-b's token on provider-a's data, headers or not."""
    call = CALLS[call_name]
    _require_route(call)
    reference = _reference_404(client, world, call)
    assert reference.status_code == 404
    before = _snapshot(world)
    response = _send(
        client,
        call,
        tenant="provider-a",
        logical_id=world.patient_a,
        authorization=_bearer(world.cast.client_b.token()),
        headers=FORGED[case_name],
    )
    _assert_outcome(response, 404, "not-found", world)
    assert response.content == reference.content
    assert _snapshot(world) == before


@pytest.mark.parametrize("call_name", list(CALLS))
def test_unknown_tenant_and_missing_resource_are_indistinguishable(client, world, call_name):
    call = CALLS[call_name]
    _require_route(call)
    reference = _reference_404(client, world, call)
    before = _snapshot(world)
    token = _bearer(world.cast.client_a.token())
    unknown = _send(
        client, call, tenant="no-such-tenant", logical_id=world.patient_a, authorization=token
    )
    other = _send(client, call, tenant="payer-b", logical_id=world.patient_b, authorization=token)
    for response in (unknown, other):
        _assert_outcome(response, 404, "not-found", world)
        assert response.content == reference.content
    # An unknown tenant and another tenant that exists answer with the same headers too.
    assert _header_names(unknown) == _header_names(other)
    assert _snapshot(world) == before


def _header_names(response) -> set[str]:
    return {name.lower() for name, _ in response.items()} - {"x-request-id"}


@pytest.mark.parametrize("call_name", ["read", "search", "history-instance", "vread"])
def test_forged_headers_cannot_move_a_valid_caller_to_another_tenant(client, world, call_name):
    call = CALLS[call_name]
    _require_route(call)
    forged = {
        "X-Tenant-ID": "payer-b",
        "X-Forwarded-Host": "payer-b",
        "X-Forwarded-Prefix": "/fhir/payer-b",
        "Host": "localhost",
    }
    response = _send(
        client,
        call,
        tenant="provider-a",
        logical_id=world.patient_a,
        authorization=_bearer(world.cast.client_a.token()),
        headers=forged,
    )
    assert response.status_code == 200, response.content[:500]
    text = response.content.decode()
    assert MARK_A in text
    assert MARK_B not in text and world.patient_b not in text


@pytest.mark.parametrize("call_name", list(CALLS))
def test_positive_control_the_right_caller_gets_through(client, world, call_name):
    """Proves each route above is the real endpoint: the right token is served."""
    call = CALLS[call_name]
    _require_route(call)
    target = world.patient_a
    if call.interaction in (Interaction.UPDATE, Interaction.PATCH, Interaction.DELETE):
        with tenant_schema(world.cast.tenant_a):
            from fhirplatform.fhir.services import resource_create

            target = resource_create(
                resource_type="Patient",
                content={"resourceType": "Patient", "active": True},
                source="urn:test:matrix",
            ).logical_id
    response = _send(
        client,
        call,
        tenant="provider-a",
        logical_id=target,
        authorization=_bearer(world.cast.client_a.token()),
    )
    assert 200 <= response.status_code < 300, response.content[:500]


def test_host_outside_allowed_hosts_is_a_400_operation_outcome(client, world):
    response = _send(
        client,
        CALLS["read"],
        tenant="provider-a",
        logical_id=world.patient_a,
        authorization=_bearer(world.cast.client_b.token()),
        headers={"Host": "provider-a.evil.example"},
    )
    assert response.status_code == 400
    assert MARK_A not in response.content.decode()
    assert response.json()["resourceType"] == "OperationOutcome"
