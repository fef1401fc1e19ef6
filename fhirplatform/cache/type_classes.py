"""Which resource types are PHI, which are reference data, which are not cached by default;
the default rule of each, and what an operator's rule may say.

Only reference data may be served stale: a PHI answer past its ttl is a miss, whatever a
rule says. A type that is neither (Questionnaire, Device, Library ...) is treated as PHI,
because "not known to be harmless" is the safe reading.
"""

from enum import StrEnum
from typing import NamedTuple

from django.conf import settings

from fhirplatform.fhir import compartments
from fhirplatform.resource_types import R4_RESOURCE_TYPES


class Rule(NamedTuple):
    ttl: int  # seconds an entry is fresh; 0: never cached
    swr: int  # seconds more it may be served stale while one request refreshes it

    @property
    def cached(self) -> bool:
        return self.ttl > 0


class CacheClass(StrEnum):
    PHI = "phi"
    REFERENCE = "reference"


# Every type of the R4 Patient compartment (CompartmentDefinition-patient) holds PHI.
PATIENT_COMPARTMENT = compartments.PATIENT_COMPARTMENT

# Shared directory and terminology data: no patient in it, changes rarely.
REFERENCE_DATA: frozenset[str] = frozenset(
    {
        "Organization", "Practitioner", "PractitionerRole", "Location", "HealthcareService",
        "Endpoint", "CodeSystem", "ValueSet", "ConceptMap", "StructureDefinition",
        "Medication", "Substance",
    }
)  # fmt: skip

# Not cached unless an operator says otherwise (a rule with a ttl):
# - AuditEvent, Provenance: trails read to see what just happened; a cached page would hide
#   the newest events, and every read of them is itself audited.
# - Consent: read by patients' representatives and operators right after they change it;
#   the decisions that depend on it never read it through this cache.
# - Binary: arbitrary, often large content (documents, images) that the cap would refuse
#   anyway, and whose bytes a stored copy would duplicate.
# - Subscription: its status is changed by the platform's deliveries, not by FHIR writes,
#   so no generation would tell a cached copy that it changed.
NOT_CACHED_BY_DEFAULT: frozenset[str] = frozenset(
    {"AuditEvent", "Provenance", "Consent", "Binary", "Subscription"}
)


def cache_class(resource_type: str) -> CacheClass:
    return CacheClass.REFERENCE if resource_type in REFERENCE_DATA else CacheClass.PHI


def rule_default(resource_type: str) -> Rule:
    """A tenant's rule for a type it has no rule of its own for."""
    if resource_type in NOT_CACHED_BY_DEFAULT or resource_type not in R4_RESOURCE_TYPES:
        return Rule(0, 0)
    if cache_class(resource_type) == CacheClass.REFERENCE:
        return Rule(settings.CACHE_REFERENCE_TTL_SECONDS, settings.CACHE_REFERENCE_SWR_SECONDS)
    return Rule(settings.CACHE_PHI_TTL_SECONDS, 0)


def rule_bounded(resource_type: str, rule: Rule) -> Rule:
    """A stored rule as it is applied: PHI never stale, whatever the row says."""
    if cache_class(resource_type) != CacheClass.REFERENCE:
        return Rule(rule.ttl, 0)
    return rule


def rule_problems(*, resource_type: str, ttl_seconds: int, swr_seconds: int) -> dict[str, str]:
    """What is wrong with an operator's rule, by field ({} when nothing is)."""
    problems: dict[str, str] = {}
    if resource_type not in R4_RESOURCE_TYPES:
        problems["resource_type"] = "Not an R4 resource type."
    limit = settings.CACHE_MAX_TTL_SECONDS
    if ttl_seconds > limit:
        problems["ttl_seconds"] = f"At most {limit} seconds."
    if swr_seconds > limit:
        problems["swr_seconds"] = f"At most {limit} seconds."
    elif swr_seconds and cache_class(resource_type) != CacheClass.REFERENCE:
        problems["swr_seconds"] = (
            "Must be 0: only reference-data types may be served stale "
            f"({', '.join(sorted(REFERENCE_DATA))}); PHI never is."
        )
    elif swr_seconds and ttl_seconds == 0:
        problems["swr_seconds"] = "Must be 0 when the type is not cached (ttl 0)."
    return problems
