"""The CapabilityStatement, generated from what this server really does.

Interactions come from the views' behaviour, search parameters from the search
registry (the same registry the index is built from), so the statement cannot claim a
parameter the server does not index; operations from the operations' own table
(operations/definitions.py), the one the URL routes are built for. A type the server
stores but does not act on is left out (UNDECLARED_TYPES).
"""

from functools import cache
from typing import Any

from django.conf import settings

from audit.fhir import SEARCH_PARAMETERS as AUDIT_SEARCH_PARAMETERS
from fhirplatform.fhir.operations.definitions import BULK_DATA_CAPABILITIES, OPERATIONS, Level
from fhirplatform.fhir.search.parsing import Control
from fhirplatform.fhir.search.registry import search_parameters_for
from fhirplatform.resource_types import NOT_STORED, R4_RESOURCE_TYPES

FHIR_VERSION = "4.0.1"
SOFTWARE_NAME = "fhirplatform"
SOFTWARE_VERSION = "0.1.0"
_TYPE_INTERACTIONS = (
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
)
# Stored and versioned like any type, but nothing acts on them: a Subscription is never
# activated and nothing is ever delivered, so declaring the type would promise
# notifications. Such a type comes back here when it works.
UNDECLARED_TYPES: frozenset[str] = frozenset({"Subscription"})
_SEARCH_RESULT_PARAMS = (
    Control.COUNT,
    Control.SORT,
    Control.SUMMARY,
    Control.ELEMENTS,
    Control.INCLUDE,
    Control.REVINCLUDE,
)


def _search_params(resource_type: str) -> list[dict[str, Any]]:
    return [
        {
            "name": p.name,
            "definition": p.definition,
            "type": str(p.type),
            "documentation": p.documentation,
        }
        for p in search_parameters_for(resource_type)
    ]


def interaction_flags(resource_type: str) -> dict[str, Any]:
    """The flags a type's entry states about its interactions: versioning, update-as-create
    and the conditional interactions. The one place to change when one of them starts or
    stops working."""
    return {
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": True,  # the tenant's switch decides (capability_statement)
        "conditionalCreate": True,
        "conditionalRead": "full-support",
        "conditionalUpdate": True,
        "conditionalDelete": "multiple" if settings.FHIR_CONDITIONAL_DELETE_MULTIPLE else "single",
    }


def _operations(resource_type: str | None) -> list[dict[str, Any]]:
    """The `operation` entries of a type (its type and instance levels), or with None of
    the system level."""
    levels = {Level.SYSTEM} if resource_type is None else {Level.TYPE, Level.INSTANCE}
    return [
        {"name": operation.name, "definition": operation.definition}
        for operation in OPERATIONS
        if operation.levels & levels
        and (
            resource_type is None
            or not operation.resource_types
            or resource_type in operation.resource_types
        )
    ]


# Built once per process: the types and the registry are fixed at deploy time.
@cache
def _resources() -> tuple[dict[str, Any], ...]:
    resources = []
    for resource_type in sorted(R4_RESOURCE_TYPES - UNDECLARED_TYPES):
        interactions = [*_TYPE_INTERACTIONS, "search-type"]
        entry: dict[str, Any] = {
            "type": resource_type,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{resource_type}",
            "interaction": [{"code": code} for code in interactions],
            **interaction_flags(resource_type),
        }
        entry["searchParam"] = _search_params(resource_type)
        if resource_type not in NOT_STORED and (operations := _operations(resource_type)):
            entry["operation"] = operations
        resources.append(_audit_trail(entry) if resource_type == "AuditEvent" else entry)
    return tuple(resources)


def _audit_trail(entry: dict[str, Any]) -> dict[str, Any]:
    """AuditEvent is the platform's audit trail (audit/fhir.py): read and searched only,
    by its own parameters."""
    return {
        "type": "AuditEvent",
        "profile": entry["profile"],
        "documentation": "The tenant's audit trail (docs/audit.md): read and search only",
        "interaction": [{"code": "read"}, {"code": "search-type"}],
        "searchParam": [p for p in entry["searchParam"] if p["name"] in AUDIT_SEARCH_PARAMETERS],
    }


def capability_statement(
    *, base_url: str, token_endpoint: str, update_creates: bool
) -> dict[str, Any]:
    """The tenant's CapabilityStatement: `update_creates` is its update-as-create switch."""
    system_interactions = [
        {"code": "transaction"},
        {"code": "batch"},
        {"code": "history-system"},
        {"code": "search-system"},
    ]
    rest: dict[str, Any] = {
        "mode": "server",
        "security": {
            "cors": False,
            "service": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                            "code": "SMART-on-FHIR",
                        }
                    ]
                }
            ],
            "extension": [
                {
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [{"url": "token", "valueUri": token_endpoint}],
                }
            ],
            "description": "OAuth2 client credentials (client_secret_basic, private_key_jwt); "
            f"see {base_url}/.well-known/smart-configuration",
        },
        "resource": [
            entry | {"updateCreate": update_creates} if "updateCreate" in entry else entry
            for entry in _resources()
        ],
        "interaction": system_interactions,
    }
    if system_operations := _operations(None):
        rest["operation"] = system_operations
    rest["searchParam"] = [
        {"name": str(name), "type": "number" if name == Control.COUNT else "special"}
        for name in _SEARCH_RESULT_PARAMS
    ]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-01-01",
        "publisher": SOFTWARE_NAME,
        "kind": "instance",
        "instantiates": [BULK_DATA_CAPABILITIES],
        "software": {"name": SOFTWARE_NAME, "version": SOFTWARE_VERSION},
        "implementation": {"description": "fhirplatform FHIR R4 API", "url": base_url},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [rest],
    }
