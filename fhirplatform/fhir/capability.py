"""The CapabilityStatement, generated from what this server really does.

Interactions come from the views' behaviour, search parameters from the search
registry (the same registry the index is built from), so the statement cannot claim a
parameter the server does not index.
"""

from functools import cache
from typing import Any

from django.conf import settings

from audit.fhir import SEARCH_PARAMETERS as AUDIT_SEARCH_PARAMETERS
from fhirplatform.fhir.search.parsing import Control
from fhirplatform.fhir.search.registry import search_parameters_for
from fhirplatform.resource_types import R4_RESOURCE_TYPES

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


# Built once per process: the types and the registry are fixed at deploy time.
@cache
def _resources() -> tuple[dict[str, Any], ...]:
    resources = []
    for resource_type in sorted(R4_RESOURCE_TYPES):
        interactions = [*_TYPE_INTERACTIONS, "search-type"]
        entry: dict[str, Any] = {
            "type": resource_type,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{resource_type}",
            "interaction": [{"code": code} for code in interactions],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": False,  # ids are server-assigned UUIDs
            "conditionalCreate": True,
            "conditionalRead": "full-support",
            "conditionalUpdate": False,
            "conditionalDelete": "not-supported",
        }
        entry["searchParam"] = _search_params(resource_type)
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


def capability_statement(*, base_url: str) -> dict[str, Any]:
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
                    "extension": [
                        {"url": "token", "valueUri": f"{settings.PUBLIC_BASE_URL}/oauth/token"}
                    ],
                }
            ],
            "description": "OAuth2 client credentials (client_secret_basic, private_key_jwt); "
            f"see {base_url}/.well-known/smart-configuration",
        },
        "resource": list(_resources()),
        "interaction": system_interactions,
    }
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
        "software": {"name": SOFTWARE_NAME, "version": SOFTWARE_VERSION},
        "implementation": {"description": "fhirplatform FHIR R4 API", "url": base_url},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [rest],
    }
