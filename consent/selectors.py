"""Reads of consent policies, policy tests and patients' Consents.

The first four read the connection's current tenant schema: the FHIR pipeline calls
them per request inside its tenant, so each is one statement that names its schema
(fhirplatform/db/named.py: no search_path, no transaction of its own). The admin, in the
public schema, reads through `policy_page`, which enters the tenant's schema itself.
"""

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from consent.codes import DeniedAnswer, Effect
from consent.decision import ConsentPolicy
from consent.models import ConsentPolicyVersion, PolicyTest
from fhirplatform.db.named import schema_named_cursor, schema_table
from fhirplatform.fhir.models import Resource, id_valid
from fhirplatform.fhir.search.models import ReferenceIndex
from fhirplatform.schemas import tenant_schema
from tenants.models import ApiClient, Grant, Partner, Tenant

# A tenant with no stored version has this one: a new tenant starts with permit.
INITIAL_POLICY = ConsentPolicy(version=0)

# The fields a policy version stores, named as ConsentPolicy names them; what
# consent.services.policy_update takes as keyword arguments.
POLICY_FIELDS = (
    "default",
    "partner_defaults",
    "client_defaults",
    "allowed_purposes",
    "explicit_types",
    "explicit_labels",
    "denied_answer",
)

_CURRENT = (
    'SELECT version, "default", partner_defaults::text, client_defaults::text, '
    "allowed_purposes::text, explicit_types::text, explicit_labels::text, denied_answer "
    "FROM {table} ORDER BY version DESC LIMIT 1"
)
# The Consent search parameter `patient` indexes Consent.patient: its rows find a
# patient's Consents without reading every Consent of the tenant.
_CONSENTS_OF_PATIENT = (
    "SELECT r.content::text FROM {resources} r WHERE r.resource_type = 'Consent' "
    "AND NOT r.deleted AND r.id IN (SELECT i.resource_id FROM {references} i "
    "WHERE i.resource_type = 'Consent' AND i.param = 'patient' "
    "AND i.target_type = 'Patient' AND i.target_id = %s) ORDER BY r.id"
)
_CONSENTS_BY_PATIENT = (
    "SELECT i.target_id, r.content::text FROM {references} i JOIN {resources} r "
    "ON r.id = i.resource_id WHERE i.resource_type = 'Consent' AND i.param = 'patient' "
    "AND i.target_type = 'Patient' AND NOT r.deleted ORDER BY r.id"
)
_CONSENTED_PATIENTS = (
    "SELECT DISTINCT i.target_id FROM {references} i JOIN {resources} r ON r.id = i.resource_id "
    "WHERE i.resource_type = 'Consent' AND i.param = 'patient' AND i.target_type = 'Patient' "
    "AND NOT r.deleted"
)


def policy_build(*, version: int, **fields: Any) -> ConsentPolicy:
    """The engine's frozen policy from stored (JSON) field values."""
    return ConsentPolicy(
        version=version,
        default=Effect(fields["default"]),
        partner_defaults={key: Effect(value) for key, value in fields["partner_defaults"].items()},
        client_defaults={key: Effect(value) for key, value in fields["client_defaults"].items()},
        allowed_purposes=frozenset(fields["allowed_purposes"]),
        explicit_types=frozenset(fields["explicit_types"]),
        explicit_labels=frozenset(fields["explicit_labels"]),
        denied_answer=DeniedAnswer(fields["denied_answer"]),
    )


def policy_of_version(*, row: ConsentPolicyVersion) -> ConsentPolicy:
    return policy_build(version=row.version, **{name: getattr(row, name) for name in POLICY_FIELDS})


def policy_fields(*, policy: ConsentPolicy) -> dict[str, Any]:
    """A policy's fields as a version stores them (JSON: sorted lists, plain strings)."""
    return {
        "default": str(policy.default),
        "partner_defaults": {key: str(value) for key, value in policy.partner_defaults.items()},
        "client_defaults": {key: str(value) for key, value in policy.client_defaults.items()},
        "allowed_purposes": sorted(policy.allowed_purposes),
        "explicit_types": sorted(policy.explicit_types),
        "explicit_labels": sorted(policy.explicit_labels),
        "denied_answer": str(policy.denied_answer),
    }


def policy_current() -> ConsentPolicy:
    """The current tenant schema's policy in force: its newest version, else version 0."""
    with schema_named_cursor() as cursor:
        cursor.execute(_CURRENT.format(table=schema_table(ConsentPolicyVersion)))
        row = cursor.fetchone()
    if row is None:
        return INITIAL_POLICY
    version, default, partners, clients, purposes, types, labels, answer = row
    return policy_build(
        version=version,
        default=default,
        partner_defaults=json.loads(partners),
        client_defaults=json.loads(clients),
        allowed_purposes=json.loads(purposes),
        explicit_types=json.loads(types),
        explicit_labels=json.loads(labels),
        denied_answer=answer,
    )


def policy_versions() -> list[ConsentPolicyVersion]:
    """Every stored version of the current tenant schema, newest first."""
    return list(ConsentPolicyVersion.objects.order_by("-version"))


def patient_consents(*, patient_id: str) -> list[dict[str, Any]]:
    """The patient's current (not deleted) Consent resources, oldest first."""
    if not id_valid(patient_id):
        return []
    statement = _CONSENTS_OF_PATIENT.format(
        resources=schema_table(Resource), references=schema_table(ReferenceIndex)
    )
    with schema_named_cursor() as cursor:
        cursor.execute(statement, [patient_id])
        return [json.loads(text) for (text,) in cursor.fetchall()]


def consents_by_patient() -> dict[str, list[dict[str, Any]]]:
    """Every current Consent resource of the tenant by its patient, oldest first: what a
    search's consent filter reads at once instead of one patient after another."""
    statement = _CONSENTS_BY_PATIENT.format(
        resources=schema_table(Resource), references=schema_table(ReferenceIndex)
    )
    found: dict[str, list[dict[str, Any]]] = {}
    with schema_named_cursor() as cursor:
        cursor.execute(statement)
        for patient_id, text in cursor.fetchall():
            found.setdefault(patient_id, []).append(json.loads(text))
    return found


def consented_patients() -> frozenset[str]:
    """Ids of the patients that have any current Consent, whatever it says."""
    statement = _CONSENTED_PATIENTS.format(
        resources=schema_table(Resource), references=schema_table(ReferenceIndex)
    )
    with schema_named_cursor() as cursor:
        cursor.execute(statement)
        return frozenset(target_id for (target_id,) in cursor.fetchall())


def partner_slugs_known(*, slugs: Iterable[str]) -> set[str]:
    """Which of `slugs` name a partner, as Consents and policies name partners."""
    return set(Partner.objects.filter(slug__in=list(slugs)).values_list("slug", flat=True))


def client_partners(*, client_ids: Iterable[str]) -> dict[str, str]:
    """{client id: its partner's slug} of the clients that exist (public schema)."""
    clients = ApiClient.objects.filter(client_id__in=list(client_ids))
    return dict(clients.values_list("client_id", "partner__slug"))


def clients_with_grant(*, tenant: Tenant, client_ids: Iterable[str]) -> set[str]:
    """Which of `client_ids` hold a grant on the tenant, active or revoked (public schema):
    a revoked grant can be re-activated, and its client's override set before that."""
    grants = Grant.objects.filter(tenant=tenant, client__client_id__in=list(client_ids))
    return set(grants.values_list("client__client_id", flat=True))


def policy_test_list() -> list[PolicyTest]:
    return list(PolicyTest.objects.order_by("name"))


@dataclass(frozen=True)
class VersionHistory:
    """One stored version and what it changed from the one before (version 0 first)."""

    row: ConsentPolicyVersion
    changes: list[tuple[str, Any, Any]]  # (field, before, after), in POLICY_FIELDS order

    @property
    def changes_text(self) -> list[tuple[str, str, str]]:
        return [(name, _text(before), _text(after)) for name, before, after in self.changes]


def _text(value: Any) -> str:
    """A stored policy value as an operator reads it."""
    if isinstance(value, dict):
        return ", ".join(f"{key}: {effect}" for key, effect in sorted(value.items())) or "none"
    if isinstance(value, list):
        return " ".join(value) or "none"
    return str(value)


@dataclass(frozen=True)
class PolicyPage:
    policy: ConsentPolicy
    fields: dict[str, Any]  # the policy's fields as stored: sorted lists, for display
    history: list[VersionHistory]  # newest first
    tests: list[PolicyTest]


def policy_changes(*, before: ConsentPolicy, after: ConsentPolicy) -> list[tuple[str, Any, Any]]:
    old, new = policy_fields(policy=before), policy_fields(policy=after)
    return [(name, old[name], new[name]) for name in POLICY_FIELDS if old[name] != new[name]]


def policy_history() -> list[VersionHistory]:
    """The current tenant schema's versions, newest first, each with its changes."""
    rows = list(reversed(policy_versions()))
    history, before = [], INITIAL_POLICY
    for row in rows:
        after = policy_of_version(row=row)
        history.append(VersionHistory(row, policy_changes(before=before, after=after)))
        before = after
    return history[::-1]


def policy_page(*, tenant: Tenant) -> PolicyPage:
    """Everything the admin's consent policy page shows of one tenant, read in its schema."""
    with tenant_schema(tenant):
        history = policy_history()
        policy = policy_of_version(row=history[0].row) if history else INITIAL_POLICY
        return PolicyPage(
            policy=policy,
            fields=policy_fields(policy=policy),
            history=history,
            tests=policy_test_list(),
        )
