"""Executable governance: policy tests stored with the tenant, run against the live engine
with the policy in force; which rules no test covers; `manage.py policy_test`."""

import json
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from consent.decision import Decision
from consent.governance import PolicyTestResult, policy_rules, policy_tests_run
from consent.models import PolicyTest
from consent.selectors import policy_current
from consent.services import (
    ConsentPolicyError,
    policy_test_create,
    policy_test_delete,
    policy_update,
)
from fhirplatform.fhir.services import resource_create
from fhirplatform.schemas import tenant_schema

pytestmark = pytest.mark.django_db

SCOPE = {
    "coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}
    ]
}
CATEGORY = [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}]


def consent(provision: dict[str, Any], patient: str | None = None) -> dict[str, Any]:
    document = {
        "resourceType": "Consent",
        "status": "active",
        "scope": SCOPE,
        "category": CATEGORY,
        "provision": provision,
    }
    if patient:
        document["patient"] = {"reference": f"Patient/{patient}"}
    return document


def observations_permit() -> dict[str, Any]:
    return {
        "type": "permit",
        "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}],
    }


@pytest.fixture
def strict_a(cast):
    """Tenant A: default permit, Observation and label R explicit, TREAT and HPAYMT only,
    the outsider partner's slug overridden to deny (it has no client here: never covered)."""
    policy_update(
        tenant=cast.tenant_a,
        by="ops",
        note="",
        explicit_types=["Observation"],
        explicit_labels=["R"],
        allowed_purposes=["TREAT", "HPAYMT"],
        partner_defaults={cast.outsider.client.partner.slug: "deny"},
        client_defaults={cast.client_a.client.client_id: "permit"},
    )
    return cast.tenant_a


def decided(result: PolicyTestResult) -> Decision:
    assert result.decision is not None, result.problem
    return result.decision


def add(tenant: Any, name: str, expected: str, **situation: Any) -> PolicyTest:
    fields = {"client_id": situation.pop("client_id", None), "purpose": "TREAT"}
    fields.update(situation)
    return policy_test_create(
        tenant=tenant,
        by="ops",
        name=name,
        client_id=fields.pop("client_id"),
        resource_type=fields.pop("resource_type", "Observation"),
        expected=expected,
        **fields,
    )


def test_policy_tests_decide_with_the_live_engine_and_report_coverage(cast, strict_a):
    client_id = cast.client_a.client.client_id
    with tenant_schema(strict_a):
        patient = resource_create(
            resource_type="Patient", content={"resourceType": "Patient"}, source="test"
        ).logical_id
        resource_create(
            resource_type="Consent", content=consent({"type": "deny"}, patient), source="test"
        )
    add(strict_a, "stored deny consent -> deny", "deny", client_id=client_id, patient_id=patient)
    add(
        strict_a,
        "stated permit naming Observation -> permit",
        "permit",
        client_id=client_id,
        consents=[consent(observations_permit())],
    )
    add(
        strict_a,
        "HRESCH is not allowed -> deny",
        "deny",
        client_id=client_id,
        purpose="HRESCH",
        resource_type="Organization",
    )
    add(
        strict_a,
        "Organization, no patient: the client override -> permit",
        "permit",
        client_id=client_id,
        resource_type="Organization",
    )
    add(
        strict_a,
        "a patient without Consents, Observation labelled R -> deny",
        "deny",
        client_id=client_id,
        consents=[],
        security_labels=["R"],
    )
    wrong = add(
        strict_a,
        "wrongly expects an Observation without Consent to be permitted",
        "permit",
        client_id=client_id,
        consents=[],
    )

    run = policy_tests_run(tenant=strict_a)

    assert run.policy.version == 1
    outcome = {result.test.name: (result.passed, decided(result).rule) for result in run.results}
    assert outcome == {
        "stored deny consent -> deny": (True, "consent-deny"),
        "stated permit naming Observation -> permit": (True, "consent-permit"),
        "HRESCH is not allowed -> deny": (True, "purpose"),
        "Organization, no patient: the client override -> permit": (True, f"client:{client_id}"),
        "a patient without Consents, Observation labelled R -> deny": (
            True,
            "explicit-type:Observation",
        ),
        wrong.name: (False, "explicit-type:Observation"),
    }
    assert not run.passed and run.failures == 1
    failed = next(result for result in run.results if not result.passed)
    assert "explicit Consent permit is required for type Observation" in failed.reason
    assert decided(failed).policy_version == 1
    assert run.rules == policy_rules(policy=run.policy)
    assert run.uncovered == [
        "default",
        f"partner:{cast.outsider.client.partner.slug}",
        "explicit-label:R",
    ]


def test_a_stored_patient_is_read_as_stored_at_each_run(cast):
    client_id = cast.client_a.client.client_id
    with tenant_schema(cast.tenant_a):
        patient = resource_create(
            resource_type="Patient", content={"resourceType": "Patient"}, source="test"
        ).logical_id
    add(cast.tenant_a, "p denies", "deny", client_id=client_id, patient_id=patient)
    assert not policy_tests_run(tenant=cast.tenant_a).passed  # no Consent yet: default permit
    with tenant_schema(cast.tenant_a):
        resource_create(
            resource_type="Consent", content=consent({"type": "deny"}, patient), source="test"
        )
    run = policy_tests_run(tenant=cast.tenant_a)
    assert run.passed
    assert decided(run.results[0]).consent_id is not None


def test_stated_consents_are_the_hypothetical_patients_own(cast):
    """A stated Consent naming some other patient still counts: it states the situation."""
    client_id = cast.client_a.client.client_id
    add(
        cast.tenant_a,
        "stated deny",
        "deny",
        client_id=client_id,
        consents=[consent({"type": "deny"}, patient="someone-else")],
    )
    run = policy_tests_run(tenant=cast.tenant_a)
    assert run.passed
    assert decided(run.results[0]).reason == "Consent/stated-1 denies this request"
    # The stored test is left as the operator wrote it.
    with tenant_schema(cast.tenant_a):
        stored = PolicyTest.objects.get(name="stated deny")
    assert stored.consents is not None
    assert stored.consents[0]["patient"] == {"reference": "Patient/someone-else"}


def test_a_new_tenant_with_no_tests_passes_and_covers_nothing(cast):
    run = policy_tests_run(tenant=cast.tenant_b)
    assert run.passed and run.results == []
    assert run.uncovered == ["default", "consent-permit", "consent-deny"]


def _bad_tests(cast: Any) -> list[tuple[dict[str, Any], str]]:
    client_id = cast.client_a.client.client_id
    good = {"name": "t", "client_id": client_id, "resource_type": "Observation", "expected": "deny"}
    return [
        ({**good, "name": "  "}, "name"),
        ({**good, "client_id": "ghost"}, "client_id"),
        ({**good, "client_id": cast.outsider.client.client_id}, "client_id"),  # grant on B only
        ({**good, "resource_type": "Observervation"}, "resource_type"),
        ({**good, "expected": "maybe"}, "expected"),
        ({**good, "purpose": "TRE AT"}, "purpose"),
        ({**good, "security_labels": "R"}, "security_labels"),
        ({**good, "patient_id": "a/b"}, "patient_id"),
        ({**good, "patient_id": "p1", "consents": []}, "consents"),
        ({**good, "consents": {"resourceType": "Consent"}}, "consents"),
        ({**good, "consents": [{"resourceType": "Consent", "status": "active"}]}, "consents"),
        ({**good, "consents": [{"resourceType": "Patient"}]}, "consents"),
        ({**good, "name": "taken"}, "name"),
    ]


@pytest.mark.parametrize("case", range(13))
def test_a_bad_policy_test_is_refused_by_field_and_nothing_is_stored(cast, case):
    add(cast.tenant_a, "taken", "deny", client_id=cast.client_a.client.client_id)
    fields, field = _bad_tests(cast)[case]
    with pytest.raises(ConsentPolicyError) as refused:
        policy_test_create(tenant=cast.tenant_a, by="ops", **fields)
    assert field in refused.value.errors, refused.value.errors
    with tenant_schema(cast.tenant_a):
        assert list(PolicyTest.objects.values_list("name", flat=True)) == ["taken"]


def test_delete_and_the_other_tenant_cannot_delete_or_see_this_tenants_tests(cast):
    test = add(cast.tenant_a, "a's test", "permit", client_id=cast.client_a.client.client_id)
    assert policy_tests_run(tenant=cast.tenant_b).results == []
    with pytest.raises(ConsentPolicyError):
        policy_test_delete(tenant=cast.tenant_b, test_id=test.pk)
    assert [r.test.name for r in policy_tests_run(tenant=cast.tenant_a).results] == ["a's test"]
    policy_test_delete(tenant=cast.tenant_a, test_id=test.pk)
    assert policy_tests_run(tenant=cast.tenant_a).results == []
    with pytest.raises(ConsentPolicyError):
        policy_test_delete(tenant=cast.tenant_a, test_id=test.pk)


def test_each_tenant_runs_against_its_own_policy(cast):
    policy_update(tenant=cast.tenant_b, by="ops", note="", default="deny")
    add(cast.tenant_a, "a permits", "permit", client_id=cast.client_a.client.client_id)
    add(cast.tenant_b, "b denies", "deny", client_id=cast.client_b.client.client_id)
    run_a, run_b = policy_tests_run(tenant=cast.tenant_a), policy_tests_run(tenant=cast.tenant_b)
    assert (run_a.policy.version, run_b.policy.version) == (0, 1)
    assert run_a.passed and run_b.passed
    with tenant_schema(cast.tenant_a):
        assert policy_current().version == 0


# --- manage.py policy_test ------------------------------------------------------------------


def _command(*args: str) -> tuple[str, CommandError | None]:
    out = StringIO()
    try:
        call_command("policy_test", *args, stdout=out)
    except CommandError as exc:
        return out.getvalue(), exc
    return out.getvalue(), None


def test_the_command_prints_each_test_and_the_uncovered_rules_and_exits_0(cast, strict_a):
    client_id = cast.client_a.client.client_id
    add(strict_a, "purpose HRESCH -> deny", "deny", client_id=client_id, purpose="HRESCH")

    output, error = _command("--tenant", strict_a.slug)

    assert error is None
    assert (
        "PASS purpose HRESCH -> deny: expected deny, got deny (purpose): purpose HRESCH" in output
    )
    assert "Rules no test covers: default, partner:" in output
    assert "consent-permit, consent-deny" in output


def test_the_command_exits_1_when_a_test_fails(cast):
    add(cast.tenant_a, "expects deny", "deny", client_id=cast.client_a.client.client_id)

    output, error = _command("--tenant", cast.tenant_a.slug)

    assert error is not None and error.returncode == 1
    assert "1 of 1 policy tests failed" in str(error)
    assert "FAIL expects deny: expected deny, got permit (default)" in output
    assert "the tenant default is permit" in output


def test_the_command_json_output(cast):
    add(cast.tenant_a, "permits", "permit", client_id=cast.client_a.client.client_id)

    output, error = _command("--tenant", cast.tenant_a.slug, "--json")

    assert error is None
    report = json.loads(output)
    assert report["passed"] is True and report["policy_version"] == 0
    assert report["tests"] == [
        {
            "name": "permits",
            "passed": True,
            "expected": "permit",
            "effect": "permit",
            "basis": "policy-default",
            "rule": "default",
            "reason": "the resource is in no patient compartment; the tenant default is permit",
            "policy_version": 0,
        }
    ]
    assert report["uncovered_rules"] == ["consent-permit", "consent-deny"]


def test_the_command_refuses_an_unknown_tenant_with_exit_1(cast):
    output, error = _command("--tenant", "no-such-tenant")
    assert error is not None and error.returncode == 1
    assert "no tenant with the slug 'no-such-tenant'" in str(error)
    assert output == ""
