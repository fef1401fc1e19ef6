"""GET /fhir/<tenant>/.well-known/smart-configuration: SMART App Launch discovery.

Unauthenticated, so a client can learn how to get a token before it has one.
Only SMART Backend Services (client credentials) is offered: no user launch.
"""

from typing import Any

from rest_framework.request import Request
from rest_framework.response import Response

from fhirplatform.fhir.pipeline import PublicFhirView
from tenants.assertions import AssertionAlgorithm
from tenants.oauth import GRANT_TYPE_CLIENT_CREDENTIALS, AuthMethod
from tenants.selectors import revocation_endpoint_url, tenant_fhir_base, token_endpoint_url

SMART_CAPABILITIES = [
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "permission-v1",
    "permission-v2",
]

# Wildcard forms of every scope syntax we parse; any resource type may replace "*".
SCOPES_SUPPORTED = [
    "system/*.cruds",
    "system/*.rs",
    "system/*.read",
    "system/*.write",
    "system/*.*",
]


def smart_configuration(*, fhir_base: str, tenant_slug: str) -> dict[str, Any]:
    return {
        "issuer": fhir_base,
        # The tenant's own token endpoint: a Backend Services client names no tenant in its
        # token request (no `resource`), and may hold grants on several.
        "token_endpoint": token_endpoint_url(tenant_slug),
        "revocation_endpoint": revocation_endpoint_url(),
        "token_endpoint_auth_methods_supported": [str(method) for method in AuthMethod],
        "token_endpoint_auth_signing_alg_values_supported": [
            str(algorithm) for algorithm in AssertionAlgorithm
        ],
        "grant_types_supported": [GRANT_TYPE_CLIENT_CREDENTIALS],
        "scopes_supported": SCOPES_SUPPORTED,
        "response_types_supported": ["token"],
        "capabilities": SMART_CAPABILITIES,
    }


class SmartConfigurationView(PublicFhirView):
    def get(self, request: Request, tenant: str) -> Response:
        body = smart_configuration(
            fhir_base=tenant_fhir_base(self.tenant), tenant_slug=self.tenant.slug
        )
        response = Response(body, content_type="application/json")
        response["Cache-Control"] = "public, max-age=3600"
        return response
