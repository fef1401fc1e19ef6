"""Executable governance: a tenant's policy tests run against the live engine, and which
rules of the policy in force no test exercises. The evidence an auditor asks for.

Each test is decided exactly as the pipeline decides a request: consent_decide with the
current policy, the patient's Consents (stored, or stated in the test) and the clock.
"""

import copy
from dataclasses import dataclass
from typing import Any

from django.utils import timezone

from consent.decision import (
    ConsentPolicy,
    ConsentRequest,
    Decision,
    Rule,
    consent_decide,
    rule_name,
)
from consent.models import PolicyTest
from consent.selectors import (
    client_partners,
    patient_consents,
    policy_current,
    policy_test_list,
)
from fhirplatform.schemas import tenant_schema
from tenants.models import Tenant

# The patient of a test that states its Consents: they are taken as this patient's own.
HYPOTHETICAL_PATIENT = "policy-test-patient"


@dataclass(frozen=True)
class PolicyTestResult:
    test: PolicyTest
    decision: Decision | None  # None when the test could not be decided (see `problem`)
    problem: str = ""

    @property
    def passed(self) -> bool:
        return self.decision is not None and self.decision.effect == self.test.expected

    @property
    def reason(self) -> str:
        return self.problem or (self.decision.reason if self.decision else "")


@dataclass(frozen=True)
class PolicyRun:
    tenant: str
    policy: ConsentPolicy
    results: list[PolicyTestResult]
    rules: list[str]  # every rule of the policy, in policy_rules order
    uncovered: list[str]  # the rules no test's decision exercised

    @property
    def passed(self) -> bool:
        return all(result.passed for result in self.results)

    @property
    def failures(self) -> int:
        return sum(not result.passed for result in self.results)

    def as_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "policy_version": self.policy.version,
            "passed": self.passed,
            "tests": [
                {
                    "name": result.test.name,
                    "passed": result.passed,
                    "expected": result.test.expected,
                    "effect": result.decision and str(result.decision.effect),
                    "basis": result.decision and str(result.decision.basis),
                    "rule": result.decision and result.decision.rule,
                    "reason": result.reason,
                    "policy_version": result.decision and result.decision.policy_version,
                }
                for result in self.results
            ],
            "rules": self.rules,
            "uncovered_rules": self.uncovered,
        }


def policy_rules(*, policy: ConsentPolicy) -> list[str]:
    """Every rule of the policy that can decide a request, by the name a Decision gives it."""
    return [
        rule_name(Rule.DEFAULT),
        *(rule_name(Rule.PARTNER, slug) for slug in sorted(policy.partner_defaults)),
        *(rule_name(Rule.CLIENT, client) for client in sorted(policy.client_defaults)),
        *([rule_name(Rule.PURPOSE)] if policy.allowed_purposes else []),
        *(rule_name(Rule.EXPLICIT_TYPE, name) for name in sorted(policy.explicit_types)),
        *(rule_name(Rule.EXPLICIT_LABEL, label) for label in sorted(policy.explicit_labels)),
        rule_name(Rule.CONSENT_PERMIT),
        rule_name(Rule.CONSENT_DENY),
    ]


def _stated(consents: list[Any]) -> list[Any]:
    """Stated Consents as the hypothetical patient's own, with ids to name in reasons."""
    own = copy.deepcopy(consents)
    for number, consent in enumerate(own, start=1):
        if isinstance(consent, dict):
            consent["patient"] = {"reference": f"Patient/{HYPOTHETICAL_PATIENT}"}
            consent.setdefault("id", f"stated-{number}")
    return own


def _situation(test: PolicyTest) -> tuple[str | None, list[Any]]:
    """The test's patient and that patient's Consents (in the current tenant schema)."""
    if test.patient_id:
        return test.patient_id, patient_consents(patient_id=test.patient_id)
    if test.consents is not None:
        return HYPOTHETICAL_PATIENT, _stated(test.consents)
    return None, []


def policy_tests_run(*, tenant: Tenant) -> PolicyRun:
    """Decide each of the tenant's policy tests with its policy in force and the patients'
    Consents as stored now; a test passes when the decision's effect is the expected one."""
    with tenant_schema(tenant):
        policy = policy_current()
        tests = policy_test_list()
        situations = [_situation(test) for test in tests]
    partners = client_partners(client_ids={test.client_id for test in tests})
    now = timezone.now()
    results = []
    for test, (patient_id, consents) in zip(tests, situations, strict=True):
        if test.client_id not in partners:
            results.append(PolicyTestResult(test, None, f"client {test.client_id} is unknown"))
            continue
        request = ConsentRequest(
            tenant=tenant.slug,
            client_id=test.client_id,
            partner=partners[test.client_id],
            purpose=test.purpose or None,
            patient_id=patient_id,
            resource_type=test.resource_type,
            security_labels=frozenset(test.security_labels),
        )
        decision = consent_decide(policy=policy, request=request, consents=consents, now=now)
        results.append(PolicyTestResult(test, decision))
    rules = policy_rules(policy=policy)
    exercised = {result.decision.rule for result in results if result.decision}
    return PolicyRun(
        tenant=tenant.slug,
        policy=policy,
        results=results,
        rules=rules,
        uncovered=[rule for rule in rules if rule not in exercised],
    )
