"""A tenant of its own for the consent enforcement tests: clients of two partners, a writer,
patients with and without Consents, and helpers to state the policy and the Consents.

The tenant is fresh per module (its policy and Consents would leak into other tests
otherwise); everything is committed, so a live server sees it too.
"""

import uuid
from dataclasses import dataclass
from typing import Any

from consent.codes import CLIENT_ID_SYSTEM, PARTNER_SYSTEM, DeniedAnswer, Effect
from consent.services import ConsentPolicyError, policy_update
from tenants.models import Grant, Tenant
from tenants.scopes import scopes_parse
from tenants.services import client_create, tenant_create, token_issue
from tests.fhir.rest_support import FhirClient, generous_limits

CONSENT_SCOPE = {
    "coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}
    ]
}
BASELINE: dict[str, Any] = {
    "default": Effect.PERMIT,
    "partner_defaults": {},
    "client_defaults": {},
    "allowed_purposes": [],
    "explicit_types": [],
    "explicit_labels": [],
    "denied_answer": DeniedAnswer.NOT_FOUND,
}


@dataclass
class ConsentWorld:
    tenant: Tenant
    reader: Grant  # partner "readers", purposes TREAT and HPAYMT
    other: Grant  # another partner, purpose TREAT
    writer: FhirClient  # writes Consents and data; never the subject of a test's denial
    reader_slug: str

    def client(self, grant: Grant, *, purpose: str = "TREAT", scopes: str | None = None) -> Any:
        issued = token_issue(
            grant=grant,
            scopes=scopes_parse(scopes or grant.scopes),
            auth_method="test",
            purpose=purpose,
        )
        return FhirClient(self.tenant.slug, issued.access_token)

    def policy(self, **changes: Any) -> None:
        """The tenant's policy: the baseline with `changes`, stored as a new version."""
        try:
            policy_update(tenant=self.tenant, by="test", note="test", **(BASELINE | changes))
        except ConsentPolicyError as error:
            if "nothing changed" not in str(error):
                raise

    def created(self, resource: dict[str, Any]) -> dict[str, Any]:
        response = self.writer.post(resource["resourceType"], resource)
        assert response.status_code == 201, response.content
        body: dict[str, Any] = response.json()
        return body


def consent_world(unique: str) -> ConsentWorld:
    slug = f"consent-{unique}"
    tenant = tenant_create(slug=slug, name=f"Consent {unique}")
    scopes = "system/*.rs"
    reader = client_create(
        partner_name=f"Readers {unique}",
        tenant_slugs=[slug],
        scopes=scopes,
        purposes=["TREAT", "HPAYMT"],
    ).grants[0]
    other = client_create(
        partner_name=f"Others {unique}", tenant_slugs=[slug], scopes=scopes, purposes=["TREAT"]
    ).grants[0]
    writer_grant = client_create(
        partner_name=f"Writers {unique}", tenant_slugs=[slug], scopes="system/*.cruds"
    ).grants[0]
    generous_limits(tenant, reader, other, writer_grant)
    token = token_issue(
        grant=writer_grant, scopes=scopes_parse(writer_grant.scopes), auth_method="test"
    )
    return ConsentWorld(
        tenant=tenant,
        reader=reader,
        other=other,
        writer=FhirClient(slug, token.access_token),
        reader_slug=reader.client.partner.slug,
    )


def unique() -> str:
    return uuid.uuid4().hex[:8]


# A provision denying everyone everything.
DENY_ALL: dict[str, Any] = {"type": "deny"}


def consent(patient_id: str, provision: dict[str, Any], status: str = "active") -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "status": status,
        "scope": CONSENT_SCOPE,
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient_id}"},
        "provision": provision,
    }


# R4 requires an actor's role; the engine matches on the reference alone.
_RECIPIENT = {
    "coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}
    ]
}


def client_actor(client_id: str) -> list[dict[str, Any]]:
    identifier = {"system": CLIENT_ID_SYSTEM, "value": client_id}
    return [{"role": _RECIPIENT, "reference": {"identifier": identifier}}]


def partner_actor(slug: str) -> list[dict[str, Any]]:
    identifier = {"system": PARTNER_SYSTEM, "value": slug}
    return [{"role": _RECIPIENT, "reference": {"identifier": identifier}}]


def observation(patient_id: str, labels: tuple[str, ...] = ()) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "valueQuantity": {"value": 70, "unit": "/min"},
    }
    if labels:
        resource["meta"] = {
            "security": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": c}
                for c in labels
            ]
        }
    return resource
