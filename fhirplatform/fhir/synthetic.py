"""Deterministic synthetic tenant data: patients with their encounters, observations (LOINC),
conditions (SNOMED CT) and medication requests (RxNorm), plus the organizations and
practitioners they refer to. The same seed always yields the same resources and ids."""

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
MRN_SYSTEM = "urn:oid:2.16.840.1.113883.3.72.5.9.1"

# (LOINC code, display, unit, UCUM code, low, high, category)
OBSERVATION_KINDS: tuple[tuple[str, str, str, str, float, float, str], ...] = (
    ("8867-4", "Heart rate", "beats/minute", "/min", 52, 110, "vital-signs"),
    ("8310-5", "Body temperature", "Cel", "Cel", 36.1, 38.4, "vital-signs"),
    ("29463-7", "Body weight", "kg", "kg", 45, 120, "vital-signs"),
    ("8302-2", "Body height", "cm", "cm", 150, 195, "vital-signs"),
    ("39156-5", "Body mass index", "kg/m2", "kg/m2", 18, 38, "vital-signs"),
    ("9279-1", "Respiratory rate", "breaths/minute", "/min", 12, 24, "vital-signs"),
    ("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", "mg/dL", 70, 180, "laboratory"),
    ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", "%", 4.8, 9.5, "laboratory"),
    (
        "2093-3",
        "Cholesterol [Mass/volume] in Serum or Plasma",
        "mg/dL",
        "mg/dL",
        140,
        280,
        "laboratory",
    ),
    ("2571-8", "Triglycerides", "mg/dL", "mg/dL", 60, 300, "laboratory"),
)
CONDITIONS = (
    ("44054006", "Diabetes mellitus type 2"),
    ("38341003", "Hypertensive disorder"),
    ("195967001", "Asthma"),
    ("55822004", "Hyperlipidemia"),
    ("40055000", "Chronic sinusitis"),
    ("162864005", "Body mass index 30+ - obesity"),
)
MEDICATIONS = (
    ("860975", "24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet"),
    ("314076", "lisinopril 10 MG Oral Tablet"),
    ("895994", "120 ACTUAT Fluticasone propionate 0.044 MG/ACTUAT Metered Dose Inhaler"),
    ("617311", "atorvastatin 10 MG Oral Tablet"),
)
GIVEN = (
    "Ana",
    "Ben",
    "Chloe",
    "Dev",
    "Elena",
    "Farid",
    "Grace",
    "Hugo",
    "Ines",
    "Jamal",
    "Kiri",
    "Liam",
    "Maya",
    "Noah",
    "Olga",
    "Priya",
    "Quinn",
    "Rosa",
    "Sami",
    "Tara",
)
FAMILY = (
    "Garcia",
    "Smith",
    "Nguyen",
    "Okafor",
    "Kowalski",
    "Haddad",
    "Rossi",
    "Tanaka",
    "Muller",
    "Silva",
    "Johnson",
    "Ivanova",
    "Khan",
    "Dubois",
    "Larsen",
    "Moreau",
)
CITIES = (("Boston", "MA"), ("Worcester", "MA"), ("Springfield", "MA"), ("Providence", "RI"))


class _Ids:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def __call__(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def synthetic_resources(
    *, patients: int, observations_per_patient: int, seed: int = 1
) -> Iterator[dict[str, Any]]:
    """Yield resources with ids; references point at resources yielded earlier."""
    rng = random.Random(seed)  # deterministic data, not security
    new_id = _Ids(rng)
    organizations = []
    for number in range(max(1, patients // 200) + 1):
        org = {
            "resourceType": "Organization",
            "id": new_id(),
            "active": True,
            "name": f"{rng.choice(FAMILY)} Health Center {number + 1}",
            "identifier": [{"system": "urn:oid:2.16.840.1.113883.4.7", "value": f"ORG{number}"}],
        }
        organizations.append(org)
        yield org
    practitioners = []
    for number in range(max(1, patients // 50) + 1):
        practitioner = {
            "resourceType": "Practitioner",
            "id": new_id(),
            "active": True,
            "identifier": [
                {"system": "http://hl7.org/fhir/sid/us-npi", "value": f"{9_999_000_000 + number}"}
            ],
            "name": [
                {"family": rng.choice(FAMILY), "given": [rng.choice(GIVEN)], "prefix": ["Dr."]}
            ],
        }
        practitioners.append(practitioner)
        yield practitioner
    now = datetime(2025, 1, 1, tzinfo=UTC)
    for number in range(patients):
        yield from _patient_record(
            rng, new_id, number, observations_per_patient, organizations, practitioners, now
        )


def _patient_record(
    rng: random.Random,
    new_id: _Ids,
    number: int,
    observations: int,
    organizations: list[dict[str, Any]],
    practitioners: list[dict[str, Any]],
    now: datetime,
) -> Iterator[dict[str, Any]]:
    patient_id = new_id()
    gender = rng.choice(("male", "female"))
    born = date(1940, 1, 1) + timedelta(days=rng.randrange(0, 365 * 65))
    city, state = rng.choice(CITIES)
    organization = rng.choice(organizations)
    yield {
        "resourceType": "Patient",
        "id": patient_id,
        "active": True,
        "identifier": [{"system": MRN_SYSTEM, "value": f"MRN{number:07d}"}],
        "name": [{"use": "official", "family": rng.choice(FAMILY), "given": [rng.choice(GIVEN)]}],
        "gender": gender,
        "birthDate": born.isoformat(),
        "address": [{"city": city, "state": state, "country": "US"}],
        "managingOrganization": {"reference": f"Organization/{organization['id']}"},
    }
    subject = {"reference": f"Patient/{patient_id}"}
    encounters: list[tuple[dict[str, Any], datetime, str]] = []
    for _ in range(max(1, observations // 10)):
        start = now - timedelta(days=rng.randrange(1, 3650), minutes=rng.randrange(0, 1440))
        practitioner = rng.choice(practitioners)
        encounter = {
            "resourceType": "Encounter",
            "id": new_id(),
            "status": "finished",
            "class": {
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                "code": "AMB",
                "display": "ambulatory",
            },
            "type": [
                {
                    "coding": [
                        {"system": SNOMED, "code": "185349003", "display": "Encounter for check up"}
                    ]
                }
            ],
            "subject": subject,
            "participant": [{"individual": {"reference": f"Practitioner/{practitioner['id']}"}}],
            "period": {"start": _instant(start), "end": _instant(start + timedelta(minutes=30))},
            "serviceProvider": {"reference": f"Organization/{organization['id']}"},
        }
        encounters.append((encounter, start, f"Practitioner/{practitioner['id']}"))
        yield encounter
    for index in range(observations):
        encounter, start, _ = encounters[index % len(encounters)]
        code, display, unit, ucum, low, high, category = rng.choice(OBSERVATION_KINDS)
        yield {
            "resourceType": "Observation",
            "id": new_id(),
            "status": "final",
            "category": [{"coding": [{"system": OBS_CATEGORY, "code": category}]}],
            "code": {
                "coding": [{"system": LOINC, "code": code, "display": display}],
                "text": display,
            },
            "subject": subject,
            "encounter": {"reference": f"Encounter/{encounter['id']}"},
            "effectiveDateTime": _instant(start + timedelta(minutes=rng.randrange(0, 30))),
            "issued": _instant(start + timedelta(hours=1)),
            "valueQuantity": {
                "value": round(rng.uniform(low, high), 1),
                "unit": unit,
                "system": UCUM,
                "code": ucum,
            },
        }
    for code, display in rng.sample(CONDITIONS, rng.randint(1, 3)):
        encounter, start, _ = rng.choice(encounters)
        yield {
            "resourceType": "Condition",
            "id": new_id(),
            "clinicalStatus": {"coding": [{"system": CONDITION_CLINICAL, "code": "active"}]},
            "code": {
                "coding": [{"system": SNOMED, "code": code, "display": display}],
                "text": display,
            },
            "subject": subject,
            "encounter": {"reference": f"Encounter/{encounter['id']}"},
            "onsetDateTime": _instant(start),
        }
    for code, display in rng.sample(MEDICATIONS, rng.randint(1, 2)):
        encounter, start, requester = rng.choice(encounters)
        yield {
            "resourceType": "MedicationRequest",
            "id": new_id(),
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": {
                "coding": [{"system": RXNORM, "code": code, "display": display}],
                "text": display,
            },
            "subject": subject,
            "encounter": {"reference": f"Encounter/{encounter['id']}"},
            "authoredOn": _instant(start),
            "requester": {"reference": requester},
        }
