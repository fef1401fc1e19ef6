"""GET /metadata: a CapabilityStatement generated from what the server supports."""

import pytest
from django.test import Client
from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from fhirplatform.fhir.capability import UNDECLARED_TYPES
from fhirplatform.fhir.search.registry import search_parameters_for
from fhirplatform.resource_types import R4_RESOURCE_TYPES
from tenants.services import tenant_update

pytestmark = pytest.mark.django_db


def _metadata(slug):
    return Client().get(f"/fhir/{slug}/metadata", HTTP_ACCEPT="application/fhir+json")


def test_metadata_needs_no_token_and_is_valid(cast, settings):
    response = _metadata(cast.tenant_a.slug)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/fhir+json")
    body = response.json()
    CapabilityStatement.model_validate(body)
    assert body["fhirVersion"] == "4.0.1"
    assert body["implementation"]["url"] == f"{settings.PUBLIC_BASE_URL}/fhir/provider-a"
    rest = body["rest"][0]
    # Every R4 type but those stored and never acted on (Subscription is never activated).
    assert {r["type"] for r in rest["resource"]} == set(R4_RESOURCE_TYPES) - UNDECLARED_TYPES
    assert "Subscription" not in {r["type"] for r in rest["resource"]}
    system = {i["code"] for i in rest["interaction"]}
    assert {"transaction", "batch", "history-system", "search-system"} <= system


def test_search_parameters_come_from_the_search_registry(cast):
    rest = _metadata(cast.tenant_a.slug).json()["rest"][0]
    observation = next(r for r in rest["resource"] if r["type"] == "Observation")
    advertised = {p["name"] for p in observation["searchParam"]}
    assert advertised == {p.name for p in search_parameters_for("Observation")}
    assert {"patient", "code", "date", "subject", "category", "status"} <= advertised
    interactions = {i["code"] for i in observation["interaction"]}
    assert {
        "read",
        "vread",
        "update",
        "patch",
        "delete",
        "create",
        "search-type",
        "history-instance",
        "history-type",
    } == interactions


def test_the_write_flags_say_what_the_tenant_and_settings_allow(cast):
    observation = _resource(cast.tenant_a.slug, "Observation")
    assert observation["updateCreate"] is True  # the tenant's switch, on by default
    assert observation["conditionalUpdate"] is True
    assert observation["conditionalDelete"] == "single"  # FHIR_CONDITIONAL_DELETE_MULTIPLE
    assert observation["conditionalCreate"] is True

    tenant_update(tenant=cast.tenant_a, fhir_update_creates=False)
    try:
        assert _resource(cast.tenant_a.slug, "Observation")["updateCreate"] is False
        assert _resource(cast.tenant_b.slug, "Observation")["updateCreate"] is True
    finally:  # the cast's tenant object outlives the test's transaction
        tenant_update(tenant=cast.tenant_a, fhir_update_creates=True)


def _resource(slug, resource_type):
    rest = _metadata(slug).json()["rest"][0]
    return next(r for r in rest["resource"] if r["type"] == resource_type)


def test_the_other_tenant_cannot_be_guessed(cast):
    # An unknown tenant gets the same 404 as anything else that is not there.
    response = _metadata("no-such-tenant")
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"
    a = _metadata(cast.tenant_a.slug).json()
    b = _metadata(cast.tenant_b.slug).json()
    assert a["implementation"]["url"].endswith("/provider-a")
    assert b["implementation"]["url"].endswith("/payer-b")


VALIDATE = "http://hl7.org/fhir/OperationDefinition/Resource-validate"


def _operations(resource: dict) -> dict[str, str]:
    return {o["name"]: o["definition"] for o in resource.get("operation", [])}


BULK = "http://hl7.org/fhir/uv/bulkdata"


def test_operations_are_declared_where_they_work(cast):
    statement = _metadata(cast.tenant_a.slug).json()
    rest = statement["rest"][0]
    by_type = {r["type"]: r for r in rest["resource"]}
    assert _operations(by_type["Patient"]) == {
        "validate": VALIDATE,
        "everything": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
        "export": f"{BULK}/OperationDefinition/patient-export",
    }
    assert _operations(by_type["Group"]) == {
        "validate": VALIDATE,
        "export": f"{BULK}/OperationDefinition/group-export",
    }
    assert _operations(by_type["Observation"]) == {
        "validate": VALIDATE,
        "lastn": "http://hl7.org/fhir/OperationDefinition/Observation-lastn",
    }
    assert _operations(by_type["Encounter"]) == {"validate": VALIDATE}
    # The audit trail is never written, so there is nothing to validate for it.
    assert "operation" not in by_type["AuditEvent"]
    assert _operations(rest) == {"export": f"{BULK}/OperationDefinition/export"}
    assert statement["instantiates"] == [f"{BULK}/CapabilityStatement/bulk-data"]
