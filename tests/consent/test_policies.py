"""Versioned tenant consent policies: append-only numbered versions, validation that changes
nothing, the generation bump after commit, and the selectors the pipeline calls."""

from typing import Any

import pytest
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext

from consent.codes import DeniedAnswer, Effect
from consent.decision import ConsentPolicy
from consent.models import ConsentPolicyVersion
from consent.selectors import (
    consented_patients,
    patient_consents,
    policy_current,
    policy_page,
    policy_versions,
)
from consent.services import ConsentPolicyError, policy_update
from fhirplatform.cache.generations import POLICY, generations_read
from fhirplatform.fhir.services import resource_create, resource_delete
from fhirplatform.schemas import tenant_schema
from tenants.models import Tenant
from tests.consent.enforcement_support import DENY_ALL, consent

pytestmark = pytest.mark.django_db


def _versions(tenant: Tenant) -> list[int]:
    with tenant_schema(tenant):
        return [row.version for row in policy_versions()]


def _current(tenant: Tenant) -> ConsentPolicy:
    with tenant_schema(tenant):
        return policy_current()


def test_a_new_tenant_starts_with_version_0_permit(cast):
    policy = _current(cast.tenant_a)
    assert policy == ConsentPolicy(version=0)
    assert policy.default is Effect.PERMIT
    assert policy.denied_answer is DeniedAnswer.NOT_FOUND
    assert _versions(cast.tenant_a) == []


def test_every_change_is_a_new_numbered_version_and_old_ones_stay(cast):
    partner_slug = cast.client_a.client.partner.slug
    client_id = cast.client_a.client.client_id

    first = policy_update(tenant=cast.tenant_a, by="ops-1", note="", default=Effect.DENY)
    second = policy_update(
        tenant=cast.tenant_a,
        by="ops-2",
        note="restricted data needs the patient's word",
        explicit_labels=["R", "PSY", "ETH"],
        explicit_types=["Observation"],
        allowed_purposes=["TREAT", "HPAYMT"],
        partner_defaults={partner_slug: "permit"},
        client_defaults={client_id: "deny"},
        denied_answer="forbidden",
    )

    assert (first.version, second.version) == (1, 2)
    assert _versions(cast.tenant_a) == [2, 1]
    with tenant_schema(cast.tenant_a):
        kept = ConsentPolicyVersion.objects.get(version=1)
    assert (kept.default, kept.created_by, kept.explicit_labels) == ("deny", "ops-1", [])
    assert _current(cast.tenant_a) == ConsentPolicy(
        version=2,
        default=Effect.DENY,
        partner_defaults={partner_slug: Effect.PERMIT},
        client_defaults={client_id: Effect.DENY},
        allowed_purposes=frozenset({"TREAT", "HPAYMT"}),
        explicit_types=frozenset({"Observation"}),
        explicit_labels=frozenset({"R", "PSY", "ETH"}),
        denied_answer=DeniedAnswer.FORBIDDEN,
    )
    # A third version changes one field; the others carry over.
    policy_update(tenant=cast.tenant_a, by="ops-1", note="back to permit", default="permit")
    third = _current(cast.tenant_a)
    assert (third.version, third.default, third.explicit_types) == (
        3,
        Effect.PERMIT,
        frozenset({"Observation"}),
    )


def test_history_says_what_each_version_changed(cast):
    policy_update(tenant=cast.tenant_a, by="ops", note="", explicit_labels=["R"])
    policy_update(tenant=cast.tenant_a, by="ops", note="PSY too", explicit_labels=["PSY", "R"])
    page = policy_page(tenant=cast.tenant_a)
    assert [entry.row.version for entry in page.history] == [2, 1]
    assert page.history[0].changes == [("explicit_labels", ["R"], ["PSY", "R"])]
    assert page.history[1].changes == [("explicit_labels", [], ["R"])]


@pytest.mark.parametrize("operation", ["update", "delete"])
def test_a_stored_version_can_be_neither_updated_nor_deleted(cast, operation):
    policy_update(tenant=cast.tenant_a, by="ops", note="", default="deny")
    with tenant_schema(cast.tenant_a):
        row = ConsentPolicyVersion.objects.get(version=1)
        with pytest.raises(IntegrityError, match="append-only"), transaction.atomic():
            if operation == "update":
                ConsentPolicyVersion.objects.filter(pk=row.pk).update(default="permit")
            else:
                ConsentPolicyVersion.objects.filter(pk=row.pk).delete()
    assert _current(cast.tenant_a).default is Effect.DENY


def _bad_inputs(cast: Any) -> list[tuple[dict[str, Any], str]]:
    """(policy_update arguments, the field the refusal names)."""
    partner_slug = cast.client_a.client.partner.slug
    return [
        ({"default": "maybe"}, "default"),
        ({"default": None}, "default"),
        ({"denied_answer": "teapot"}, "denied_answer"),
        ({"allowed_purposes": "TREAT"}, "allowed_purposes"),  # a string is not a list
        ({"allowed_purposes": ["TREAT", ""]}, "allowed_purposes"),
        ({"allowed_purposes": ["TRE AT"]}, "allowed_purposes"),
        ({"explicit_labels": [7]}, "explicit_labels"),
        ({"explicit_types": ["Observatoin"]}, "explicit_types"),
        ({"partner_defaults": {"no-such-partner": "deny"}}, "partner_defaults"),
        ({"partner_defaults": {partner_slug: "sometimes"}}, "partner_defaults"),
        ({"partner_defaults": ["acme"]}, "partner_defaults"),
        ({"client_defaults": {"no-such-client": "deny"}}, "client_defaults"),
        # The outsider's only grant is on tenant B.
        ({"client_defaults": {cast.outsider.client.client_id: "deny"}}, "client_defaults"),
        ({"colour": "red"}, "colour"),
        ({"default": "permit"}, "__all__"),  # version 1 changes nothing
    ]


@pytest.mark.parametrize("case", range(15))
def test_bad_input_is_refused_by_field_and_changes_nothing(
    cast, case, django_capture_on_commit_callbacks
):
    policy_update(tenant=cast.tenant_a, by="ops", note="", default="deny", explicit_types=["Group"])
    before = _current(cast.tenant_a)
    fields, field = _bad_inputs(cast)[case]
    if field == "__all__":
        fields = {"default": "deny"}
    with (
        django_capture_on_commit_callbacks() as callbacks,
        pytest.raises(ConsentPolicyError) as refused,
    ):
        policy_update(tenant=cast.tenant_a, by="ops", note="a reason", **fields)
    assert field in refused.value.errors, refused.value.errors
    assert str(refused.value)
    assert callbacks == []
    assert _current(cast.tenant_a) == before
    assert _versions(cast.tenant_a) == [1]


def test_every_bad_field_is_named_at_once(cast):
    with pytest.raises(ConsentPolicyError) as refused:
        policy_update(
            tenant=cast.tenant_a, by=" ", note="", default="maybe", explicit_types=["Nope"]
        )
    assert set(refused.value.errors) == {"by", "default", "explicit_types"}
    assert _versions(cast.tenant_a) == []


def test_a_note_is_required_after_the_first_version(cast):
    policy_update(tenant=cast.tenant_a, by="ops", note="", default="deny")
    with pytest.raises(ConsentPolicyError) as refused:
        policy_update(tenant=cast.tenant_a, by="ops", note="  ", default="permit")
    assert list(refused.value.errors) == ["note"]
    assert _versions(cast.tenant_a) == [1]


def test_an_override_key_kept_from_the_version_before_is_not_looked_up_again(cast):
    client_id = cast.client_a.client.client_id
    policy_update(tenant=cast.tenant_a, by="ops", note="", client_defaults={client_id: "deny"})
    # The kept key passes whatever happened to the client since; a new unknown key does not.
    with pytest.raises(ConsentPolicyError):
        policy_update(
            tenant=cast.tenant_a,
            by="ops",
            note="add one",
            client_defaults={client_id: "permit", "ghost": "deny"},
        )
    policy_update(
        tenant=cast.tenant_a, by="ops", note="flip", client_defaults={client_id: "permit"}
    )
    assert _current(cast.tenant_a).client_defaults == {client_id: Effect.PERMIT}


def test_each_tenant_has_its_own_versions(cast):
    policy_update(tenant=cast.tenant_a, by="ops", note="", default="deny")
    policy_update(tenant=cast.tenant_a, by="ops", note="again", explicit_labels=["R"])
    policy_update(tenant=cast.tenant_b, by="ops", note="", explicit_types=["Claim"])

    assert _versions(cast.tenant_a) == [2, 1]
    assert _versions(cast.tenant_b) == [1]
    assert _current(cast.tenant_b) == ConsentPolicy(version=1, explicit_types=frozenset({"Claim"}))
    assert policy_page(tenant=cast.tenant_b).history[0].row.version == 1
    # Client A has no grant on tenant B: tenant B's policy cannot name it.
    with pytest.raises(ConsentPolicyError):
        policy_update(
            tenant=cast.tenant_b,
            by="ops",
            note="x",
            client_defaults={cast.client_a.client.client_id: "deny"},
        )


# --- the generation bump -----------------------------------------------------------------


def _policy_generation(schema: str) -> str:
    tokens = generations_read(tenant_schema=schema, names=[POLICY])
    assert tokens is not None, "Redis is not reachable"
    return tokens[POLICY]


def test_policy_update_bumps_the_policy_generation_on_commit_only(
    cast, django_capture_on_commit_callbacks
):
    schema = cast.tenant_a.schema_name
    before = _policy_generation(schema)

    with (
        django_capture_on_commit_callbacks() as rolled_back,
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        policy_update(tenant=cast.tenant_a, by="ops", note="", default="deny")
        raise RuntimeError("the caller's transaction fails")
    assert rolled_back == []
    assert _policy_generation(schema) == before

    with django_capture_on_commit_callbacks(execute=True) as committed:
        policy_update(tenant=cast.tenant_a, by="ops", note="", default="deny")
        assert _policy_generation(schema) == before  # not before the commit
    assert len(committed) == 1
    assert _policy_generation(schema) != before
    assert _policy_generation(cast.tenant_b.schema_name) != _policy_generation(schema)


# --- the pipeline's selectors ---------------------------------------------------------------


def _stored(content: dict[str, Any]) -> str:
    resource = resource_create(
        resource_type=content["resourceType"], content=content, source="test"
    )
    return resource.logical_id


def test_patient_consents_and_consented_patients_read_the_current_consents(cast):
    with tenant_schema(cast.tenant_a):
        p1, p2, p3, p4 = (_stored({"resourceType": "Patient"}) for _ in range(4))
        first, second = (
            _stored(consent(p1, DENY_ALL)),
            _stored(consent(p1, DENY_ALL, status="inactive")),
        )
        gone = _stored(consent(p2, DENY_ALL))
        resource_delete(resource_type="Consent", logical_id=gone)
        _stored(consent(p3, DENY_ALL))
        _stored(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "subject": {"reference": f"Patient/{p4}"},
            }
        )

        with CaptureQueriesContext(connection) as statements:
            of_p1 = patient_consents(patient_id=p1)
            patients = consented_patients()
            policy = policy_current()
        of_p2 = patient_consents(patient_id=p2)
        of_p4 = patient_consents(patient_id=p4)
        nobody = patient_consents(patient_id="not an id!")

    assert len(statements) == 3  # one statement each
    assert policy.version == 0
    assert [consent["id"] for consent in of_p1] == [first, second]
    assert of_p1[0]["patient"] == {"reference": f"Patient/{p1}"}
    assert of_p1[0]["meta"]["versionId"] == "1"
    assert of_p2 == [] and of_p4 == [] and nobody == []
    assert patients == frozenset({p1, p3})


def test_the_other_tenant_sees_none_of_these_consents(cast):
    with tenant_schema(cast.tenant_a):
        patient = _stored({"resourceType": "Patient"})
        _stored(consent(patient, DENY_ALL))
    with tenant_schema(cast.tenant_b):
        assert patient_consents(patient_id=patient) == []
        assert patient not in consented_patients()
        assert policy_current().version == 0
