"""Every code of the consent engine, in one place: effects, bases, answers, FHIR systems."""

from enum import StrEnum


class Effect(StrEnum):
    PERMIT = "permit"
    DENY = "deny"


class DecisionBasis(StrEnum):
    """What decided a request: a patient's Consent, or one rule of the tenant's policy."""

    CONSENT = "consent"
    POLICY_DEFAULT = "policy-default"  # no Consent provision applied (or no patient)
    POLICY_PURPOSE = "policy-purpose"  # the purpose of use is not allowed on this tenant
    POLICY_EXPLICIT = "policy-explicit"  # the type or a label needs a Consent that names it


class DeniedAnswer(StrEnum):
    """How the pipeline answers a denied read; the engine only carries it."""

    NOT_FOUND = "not-found"  # as if the resource did not exist: reveals nothing of the choice
    FORBIDDEN = "forbidden"  # 403 with the `consent` reason code


# Systems of the identifiers that name a caller in provision.actor[].reference.identifier.
CLIENT_ID_SYSTEM = "urn:fhirplatform:client-id"
PARTNER_SYSTEM = "urn:fhirplatform:partner"

CONSENT_SCOPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/consentscope"
PATIENT_PRIVACY = "patient-privacy"
PURPOSE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
RESOURCE_TYPE_SYSTEM = "http://hl7.org/fhir/resource-types"

# The reason code (issue.details.coding) of a 403 answered for a consent denial, when the
# tenant's policy chooses to tell callers (DeniedAnswer.FORBIDDEN).
CONSENT_REASON = "consent"
