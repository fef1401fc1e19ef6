"""TTL rules per tenant and resource type: defaults, an operator's rules and their limits,
and the in-process copy refreshed by the POLICY token."""

import pytest
from django.core.exceptions import ValidationError

from fhirplatform.cache.generations import POLICY, generations_read
from fhirplatform.cache.models import CacheRule
from fhirplatform.cache.rules import Rule, cache_rule, cache_rules_for
from fhirplatform.cache.services import cache_rule_delete, cache_rule_set
from fhirplatform.cache.type_classes import (
    NOT_CACHED_BY_DEFAULT,
    PATIENT_COMPARTMENT,
    REFERENCE_DATA,
    rule_default,
)
from fhirplatform.resource_types import R4_RESOURCE_TYPES


def test_a_new_tenant_caches_clinical_types_briefly_and_reference_data_longer():
    assert rule_default("Patient") == Rule(30, 0)
    assert rule_default("Observation") == Rule(30, 0)
    assert rule_default("Organization") == Rule(300, 300)
    assert rule_default("ValueSet") == Rule(300, 300)
    assert rule_default("Questionnaire") == Rule(30, 0)  # not known to be harmless: as PHI
    for never in ("AuditEvent", "Consent", "Binary", "Provenance", "Subscription"):
        assert rule_default(never) == Rule(0, 0) and not rule_default(never).cached
    assert rule_default("NotAType") == Rule(0, 0)


def test_the_type_lists_are_r4_types_and_reference_data_holds_no_patient():
    assert PATIENT_COMPARTMENT <= R4_RESOURCE_TYPES
    assert REFERENCE_DATA <= R4_RESOURCE_TYPES and NOT_CACHED_BY_DEFAULT <= R4_RESOURCE_TYPES
    assert not REFERENCE_DATA & PATIENT_COMPARTMENT


def test_the_compartment_list_is_the_fhir_apps_compartment():
    compartments = pytest.importorskip("fhirplatform.fhir.compartments")
    if not hasattr(compartments, "compartment_parameters"):
        pytest.skip("fhirplatform.fhir.compartments has no compartment_parameters")
    assert set(compartments.compartment_parameters()) == PATIENT_COMPARTMENT


@pytest.mark.parametrize(
    ("resource_type", "ttl", "swr", "field"),
    [
        ("Observation", 60, 10, "swr_seconds"),  # PHI is never served stale
        ("Questionnaire", 60, 10, "swr_seconds"),
        ("Organization", 0, 10, "swr_seconds"),
        ("Organization", 86401, 0, "ttl_seconds"),
        ("Organization", 60, 86401, "swr_seconds"),
        ("Nonsense", 60, 0, "resource_type"),
    ],
)
def test_refused_rules_change_nothing(db, cast, resource_type, ttl, swr, field):
    with pytest.raises(ValidationError) as refused:
        cache_rule_set(
            tenant=cast.tenant_a, resource_type=resource_type, ttl_seconds=ttl, swr_seconds=swr
        )
    assert field in refused.value.message_dict
    assert not CacheRule.objects.filter(tenant=cast.tenant_a).exists()


def test_a_rule_replaces_the_default_for_its_tenant_only(db, cast):
    cache_rule_set(tenant=cast.tenant_a, resource_type="Observation", ttl_seconds=5)
    cache_rule_set(
        tenant=cast.tenant_a, resource_type="Organization", ttl_seconds=900, swr_seconds=60
    )
    cache_rule_set(tenant=cast.tenant_a, resource_type="AuditEvent", ttl_seconds=10)
    assert cache_rule(tenant=cast.tenant_a, resource_type="Observation") == Rule(5, 0)
    assert cache_rule(tenant=cast.tenant_a, resource_type="Organization") == Rule(900, 60)
    assert cache_rule(tenant=cast.tenant_a, resource_type="AuditEvent") == Rule(10, 0)
    assert cache_rule(tenant=cast.tenant_b, resource_type="Observation") == Rule(30, 0)
    # Set again: the same row, changed.
    cache_rule_set(tenant=cast.tenant_a, resource_type="Observation", ttl_seconds=0)
    assert CacheRule.objects.filter(tenant=cast.tenant_a, resource_type="Observation").count() == 1
    assert not cache_rule(tenant=cast.tenant_a, resource_type="Observation").cached
    cache_rule_delete(rule=CacheRule.objects.get(tenant=cast.tenant_a, resource_type="Observation"))
    assert cache_rule(tenant=cast.tenant_a, resource_type="Observation") == Rule(30, 0)


def test_a_stored_phi_rule_is_never_stale_whatever_its_row_says(db, cast):
    # A row written around the service (a raw insert, an old release).
    CacheRule.objects.create(
        tenant=cast.tenant_a, resource_type="Patient", ttl_seconds=20, swr_seconds=100
    )
    assert cache_rule(tenant=cast.tenant_a, resource_type="Patient") == Rule(20, 0)


def _policy_token(tenant) -> str:
    tokens = generations_read(tenant_schema=tenant.schema_name, names=[POLICY])
    assert tokens is not None
    return tokens[POLICY]


def test_a_rule_change_bumps_the_policy_on_commit_and_processes_read_the_rules_again(
    db, cast, django_capture_on_commit_callbacks, django_assert_num_queries
):
    tenant = cast.tenant_a
    before = _policy_token(tenant)
    rules = cache_rules_for(tenant=tenant, policy_token=before)
    assert rules.rule("Observation") == Rule(30, 0)
    with django_assert_num_queries(0):  # per request: from memory
        assert cache_rules_for(tenant=tenant, policy_token=before) is rules

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        cache_rule_set(tenant=tenant, resource_type="Observation", ttl_seconds=7)
    assert _policy_token(tenant) == before  # nothing told before the commit
    for callback in callbacks:
        callback()
    after = _policy_token(tenant)
    assert after != before

    with django_assert_num_queries(1):
        fresh = cache_rules_for(tenant=tenant, policy_token=after)
    assert fresh.rule("Observation") == Rule(7, 0)
    assert fresh.rule("Organization") == Rule(300, 300)
    assert cache_rules_for(tenant=cast.tenant_b, policy_token=after).rule("Observation") == Rule(
        30, 0
    )
