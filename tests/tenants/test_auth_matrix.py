"""The negative matrix: every FHIR interaction against every way a caller can be wrong.

Each case must get its documented status and an OperationOutcome, leak nothing of
either tenant, and change nothing. The 404 for another tenant's token, an unknown
tenant and a missing resource is one body, byte for byte.
"""

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from fhirplatform.fhir.models import Resource
from fhirplatform.fhir.services import resource_create
from fhirplatform.schemas import tenant_schema
from tenants.scopes import Interaction, required_scope_text
from tests.fhir.rest_support import generous_plans_committed
from tests.tenants.matrix_support import (
    CALLS,
    MARK_A,
    MARK_B,
    Call,
    World,
    alg_none_jwt,
    bearer,
    deleted_grant,
    expired,
    revoked_client,
    revoked_grant,
    revoked_token,
    route_exists,
    send,
    signed_assertion_as_bearer,
    snapshot,
    store_patient,
    suspended_tenant,
)

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def world(cast, django_db_blocker) -> Iterator[World]:
    """One committed patient per tenant for the module, removed afterwards (others count rows).

    The cast is on generous plans: a wrong-tenant request is charged to the caller's own
    quota, and the matrix sends hundreds of them within seconds."""
    with generous_plans_committed(cast, django_db_blocker):
        with django_db_blocker.unblock():
            built = World(
                cast=cast,
                patient_a=store_patient(cast.tenant_a, MARK_A),
                patient_b=store_patient(cast.tenant_b, MARK_B),
            )
        yield built
        with django_db_blocker.unblock():
            for tenant, logical_id in (
                (cast.tenant_a, built.patient_a),
                (cast.tenant_b, built.patient_b),
            ):
                with tenant_schema(tenant):
                    Resource.objects.filter(resource_type="Patient", logical_id=logical_id).delete()


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
    "unknown-token": Case(401, "login", lambda w: bearer(uuid.uuid4().hex * 2)),
    "expired-token": Case(401, "expired", expired),
    "revoked-token": Case(401, "login", revoked_token),
    "deleted-grant": Case(401, "login", deleted_grant),
    "alg-none-jwt": Case(401, "login", alg_none_jwt),
    "client-assertion-as-token": Case(401, "login", signed_assertion_as_bearer),
    "revoked-client": Case(403, "suspended", revoked_client),
    "revoked-grant": Case(403, "suspended", revoked_grant),
    "suspended-tenant": Case(403, "suspended", suspended_tenant),
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
    if not route_exists(call):
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
    return send(
        client,
        read,
        tenant="provider-a",
        logical_id="no-such-" + uuid.uuid4().hex[:8],
        authorization=bearer(world.cast.client_a.token()),
    )


@pytest.mark.parametrize("case_name", list(UNAUTHENTICATED))
@pytest.mark.parametrize("call_name", list(CALLS))
def test_refused_caller_gets_its_status_and_nothing_else(client, world, call_name, case_name):
    call, case = CALLS[call_name], UNAUTHENTICATED[case_name]
    _require_route(call)
    before = snapshot(world)
    response = send(
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
    assert snapshot(world) == before


@pytest.mark.parametrize("call_name", list(CALLS))
def test_scope_that_does_not_cover_the_interaction_is_403(client, world, call_name):
    call = CALLS[call_name]
    _require_route(call)
    letter_needed = required_scope_text(call.resource_type, call.interaction)
    other_letters = "".join(letter for letter in "cruds" if letter != letter_needed[-1])
    before = snapshot(world)
    for scope in (f"system/Observation.{other_letters}", f"system/Patient.{other_letters}"):
        token = world.cast.client_a.token(scope)
        response = send(
            client,
            call,
            tenant="provider-a",
            logical_id=world.patient_a,
            authorization=bearer(token),
        )
        outcome = _assert_outcome(response, 403, "forbidden", world)
        assert letter_needed in outcome["issue"][0]["diagnostics"]
    assert snapshot(world) == before


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
    before = snapshot(world)
    response = send(
        client,
        call,
        tenant="provider-a",
        logical_id=world.patient_a,
        authorization=bearer(world.cast.client_b.token()),
        headers=FORGED[case_name],
    )
    _assert_outcome(response, 404, "not-found", world)
    assert response.content == reference.content
    assert snapshot(world) == before


@pytest.mark.parametrize("call_name", list(CALLS))
def test_unknown_tenant_and_missing_resource_are_indistinguishable(client, world, call_name):
    call = CALLS[call_name]
    _require_route(call)
    reference = _reference_404(client, world, call)
    before = snapshot(world)
    token = bearer(world.cast.client_a.token())
    unknown = send(
        client, call, tenant="no-such-tenant", logical_id=world.patient_a, authorization=token
    )
    other = send(client, call, tenant="payer-b", logical_id=world.patient_b, authorization=token)
    for response in (unknown, other):
        _assert_outcome(response, 404, "not-found", world)
        assert response.content == reference.content
    # An unknown tenant and another tenant that exists answer with the same headers too.
    assert _header_names(unknown) == _header_names(other)
    assert snapshot(world) == before


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
    response = send(
        client,
        call,
        tenant="provider-a",
        logical_id=world.patient_a,
        authorization=bearer(world.cast.client_a.token()),
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
            target = resource_create(
                resource_type="Patient",
                content={"resourceType": "Patient", "active": True},
                source="urn:test:matrix",
            ).logical_id
    response = send(
        client,
        call,
        tenant="provider-a",
        logical_id=target,
        authorization=bearer(world.cast.client_a.token()),
    )
    assert 200 <= response.status_code < 300, response.content[:500]


def test_host_outside_allowed_hosts_is_a_400_operation_outcome(client, world):
    response = send(
        client,
        CALLS["read"],
        tenant="provider-a",
        logical_id=world.patient_a,
        authorization=bearer(world.cast.client_b.token()),
        headers={"Host": "provider-a.evil.example"},
    )
    assert response.status_code == 400
    assert MARK_A not in response.content.decode()
    assert response.json()["resourceType"] == "OperationOutcome"
