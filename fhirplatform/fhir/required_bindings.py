"""Code tables of the required bindings (R4 4.0.1) that the R4B models do not check.

Data only: fhirplatform/fhir/validation.py applies them. The models type `code` elements
as pattern-checked strings, so these tables are what refuses `"status": "done"`.
"""

_STATUS = "status"
_EVENT_REQUEST = (
    "proposal",
    "plan",
    "order",
    "original-order",
    "reflex-order",
    "filler-order",
    "instance-order",
    "option",
)
_FINANCIAL = ("active", "cancelled", "draft", "entered-in-error")
_GENDER = ("male", "female", "other", "unknown")
_REQUEST_STATUS = (
    "draft",
    "active",
    "on-hold",
    "revoked",
    "completed",
    "entered-in-error",
    "unknown",
)
_CLAIM_USE = ("claim", "preauthorization", "predetermination")

# Required bindings (R4 4.0.1) on plain `code` elements of the core types: element -> codes.
REQUIRED_CODES: dict[str, dict[str, tuple[str, ...]]] = {
    "Observation": {
        _STATUS: (
            "registered",
            "preliminary",
            "final",
            "amended",
            "corrected",
            "cancelled",
            "entered-in-error",
            "unknown",
        )
    },
    "Encounter": {
        _STATUS: (
            "planned",
            "arrived",
            "triaged",
            "in-progress",
            "onleave",
            "finished",
            "cancelled",
            "entered-in-error",
            "unknown",
        )
    },
    "MedicationRequest": {
        _STATUS: (
            "active",
            "on-hold",
            "cancelled",
            "completed",
            "entered-in-error",
            "stopped",
            "draft",
            "unknown",
        ),
        "intent": _EVENT_REQUEST,
    },
    "Procedure": {
        _STATUS: (
            "preparation",
            "in-progress",
            "not-done",
            "on-hold",
            "stopped",
            "completed",
            "entered-in-error",
            "unknown",
        )
    },
    "DiagnosticReport": {
        _STATUS: (
            "registered",
            "partial",
            "preliminary",
            "final",
            "amended",
            "corrected",
            "appended",
            "cancelled",
            "entered-in-error",
            "unknown",
        )
    },
    "DocumentReference": {_STATUS: ("current", "superseded", "entered-in-error")},
    "Consent": {
        _STATUS: ("draft", "proposed", "active", "rejected", "inactive", "entered-in-error")
    },
    "Immunization": {_STATUS: ("completed", "entered-in-error", "not-done")},
    "AllergyIntolerance": {
        "type": ("allergy", "intolerance"),
        "category": ("food", "medication", "environment", "biologic"),
        "criticality": ("low", "high", "unable-to-assess"),
    },
    "Group": {"type": ("person", "animal", "practitioner", "device", "medication", "substance")},
    "Patient": {"gender": _GENDER},
    "Practitioner": {"gender": _GENDER},
    "RelatedPerson": {"gender": _GENDER},
    "Person": {"gender": _GENDER},
    "Claim": {_STATUS: _FINANCIAL, "use": _CLAIM_USE},
    "ClaimResponse": {_STATUS: _FINANCIAL},
    "Coverage": {_STATUS: _FINANCIAL},
    "ExplanationOfBenefit": {
        _STATUS: _FINANCIAL,
        "use": _CLAIM_USE,
        "outcome": ("queued", "complete", "error", "partial"),
    },
    "CarePlan": {
        _STATUS: _REQUEST_STATUS,
        "intent": ("proposal", "plan", "order", "option"),
    },
    "CareTeam": {_STATUS: ("proposed", "active", "suspended", "inactive", "entered-in-error")},
    "ServiceRequest": {
        _STATUS: _REQUEST_STATUS,
        "intent": (*_EVENT_REQUEST, "directive"),
    },
    "MedicationAdministration": {
        _STATUS: (
            "in-progress",
            "not-done",
            "on-hold",
            "completed",
            "entered-in-error",
            "stopped",
            "unknown",
        )
    },
    "MedicationStatement": {
        _STATUS: (
            "active",
            "completed",
            "entered-in-error",
            "intended",
            "stopped",
            "on-hold",
            "unknown",
            "not-taken",
        )
    },
    "ImagingStudy": {
        _STATUS: ("registered", "available", "cancelled", "entered-in-error", "unknown")
    },
    "Goal": {
        "lifecycleStatus": (
            "proposed",
            "planned",
            "accepted",
            "active",
            "on-hold",
            "completed",
            "cancelled",
            "entered-in-error",
            "rejected",
        )
    },
    "Device": {_STATUS: ("active", "inactive", "entered-in-error", "unknown")},
    "Location": {_STATUS: ("active", "suspended", "inactive")},
    "Medication": {_STATUS: ("active", "inactive", "entered-in-error")},
    "Flag": {_STATUS: ("active", "inactive", "entered-in-error")},
    "Composition": {_STATUS: ("preliminary", "final", "amended", "entered-in-error")},
    "QuestionnaireResponse": {
        _STATUS: ("in-progress", "completed", "amended", "entered-in-error", "stopped")
    },
    "EpisodeOfCare": {
        _STATUS: (
            "planned",
            "waitlist",
            "active",
            "onhold",
            "finished",
            "cancelled",
            "entered-in-error",
        )
    },
    "FamilyMemberHistory": {
        _STATUS: ("partial", "completed", "entered-in-error", "health-unknown")
    },
    "Task": {
        _STATUS: (
            "draft",
            "requested",
            "received",
            "accepted",
            "rejected",
            "ready",
            "cancelled",
            "in-progress",
            "on-hold",
            "failed",
            "completed",
            "entered-in-error",
        )
    },
}

# Required bindings on CodeableConcepts: element -> (code system, codes).
REQUIRED_CONCEPTS: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {
    "Condition": {
        "clinicalStatus": (
            "http://terminology.hl7.org/CodeSystem/condition-clinical",
            ("active", "recurrence", "relapse", "inactive", "remission", "resolved"),
        ),
        "verificationStatus": (
            "http://terminology.hl7.org/CodeSystem/condition-ver-status",
            (
                "unconfirmed",
                "provisional",
                "differential",
                "confirmed",
                "refuted",
                "entered-in-error",
            ),
        ),
    },
    "AllergyIntolerance": {
        "clinicalStatus": (
            "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
            ("active", "inactive", "resolved"),
        ),
        "verificationStatus": (
            "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
            ("unconfirmed", "confirmed", "refuted", "entered-in-error"),
        ),
    },
}
NARRATIVE_STATUS = ("generated", "extensions", "additional", "empty")
