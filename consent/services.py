"""Writes of consent governance: new policy versions and the policy tests operators state.

Every service takes the tenant and enters its schema (fhirplatform.schemas.tenant_schema),
checks everything before it writes, and on bad input raises ConsentPolicyError naming
the fields, having changed nothing. The admin and the commands call these, never the
models.
"""

import logging
import re
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

from django.db import connection, transaction

from consent.codes import DeniedAnswer, Effect
from consent.decision import ConsentPolicy
from consent.models import ConsentPolicyVersion, PolicyTest
from consent.selectors import (
    INITIAL_POLICY,
    POLICY_FIELDS,
    clients_with_grant,
    partner_slugs_known,
    policy_fields,
    policy_of_version,
)
from fhirplatform.cache.generations import generations_changed
from fhirplatform.errors import FhirError
from fhirplatform.fhir.models import id_valid
from fhirplatform.fhir.validation import resource_validate
from fhirplatform.resource_types import R4_RESOURCE_TYPES
from fhirplatform.schemas import tenant_schema
from tenants.models import Tenant

logger = logging.getLogger(__name__)

# A code (purpose of use, security label): FHIR's `code`, whitespace-free for our lists.
_CODE = re.compile(r"\S{1,64}")
NON_FIELD = "__all__"  # Django's key for an error of no one field


class ConsentPolicyError(ValueError):
    """Bad input to a consent service; nothing was changed. `errors`: field -> messages."""

    def __init__(self, errors: Mapping[str, list[str]]) -> None:
        self.errors = {field: list(messages) for field, messages in errors.items()}
        super().__init__(
            "; ".join(
                f"{field}: {message}" if field != NON_FIELD else message
                for field, messages in self.errors.items()
                for message in messages
            )
        )


class _Errors:
    """Collects every refusal, so one answer names all the fields that are wrong."""

    def __init__(self) -> None:
        self.by_field: dict[str, list[str]] = {}

    def add(self, field: str, message: str) -> None:
        self.by_field.setdefault(field, []).append(message)

    def raise_any(self) -> None:
        if self.by_field:
            raise ConsentPolicyError(self.by_field)


def _choice_clean(value: object, field: str, errors: _Errors, *, codes: type[StrEnum]) -> str:
    if not isinstance(value, str) or value not in codes.__members__.values():
        errors.add(field, f"{value!r} is not one of {', '.join(codes)}")
        return ""
    return str(codes(value))


def _codes_clean(value: object, field: str, errors: _Errors) -> list[str]:
    """A list of distinct codes, sorted; a string alone is refused (it is not a list)."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        errors.add(field, "must be a list of codes")
        return []
    codes = list(value)
    bad = [code for code in codes if not (isinstance(code, str) and _CODE.fullmatch(code))]
    if bad:
        errors.add(field, f"not codes (1-64 characters, no spaces): {bad!r}")
        return []
    return sorted(set(codes))


def _types_clean(value: object, field: str, errors: _Errors) -> list[str]:
    types = _codes_clean(value, field, errors)
    unknown = [name for name in types if name not in R4_RESOURCE_TYPES]
    if unknown:
        errors.add(field, f"not R4 resource types: {', '.join(unknown)}")
    return types


def _overrides_clean(
    value: object, field: str, errors: _Errors, *, known: Iterable[str]
) -> tuple[dict[str, str], list[str]]:
    """The overrides' effects checked; returns them and the keys `known` lacks (new ones)."""
    if not isinstance(value, Mapping):
        errors.add(field, "must map each key to an effect")
        return {}, []
    cleaned: dict[str, str] = {}
    for key, effect in value.items():
        if not isinstance(key, str) or not key:
            errors.add(field, f"{key!r} is not a key")
            continue
        cleaned[key] = _choice_clean(effect, field, errors, codes=Effect)
    return cleaned, sorted(set(cleaned) - set(known))


def _policy_clean(
    *, tenant: Tenant, current: ConsentPolicy, fields: Mapping[str, Any], errors: _Errors
) -> dict[str, Any]:
    """The current policy's stored fields with `fields` applied, each checked.

    Override keys already in the current policy are kept without a look-up: a key that
    named a partner or a granted client when it was set stays valid, so whatever happened
    to that partner or client since cannot block every later change to the policy."""
    for name in sorted(set(fields) - set(POLICY_FIELDS)):
        errors.add(name, "is not a field of the consent policy")
    values = policy_fields(policy=current)
    if "default" in fields:
        values["default"] = _choice_clean(fields["default"], "default", errors, codes=Effect)
    if "denied_answer" in fields:
        values["denied_answer"] = _choice_clean(
            fields["denied_answer"], "denied_answer", errors, codes=DeniedAnswer
        )
    for name in ("allowed_purposes", "explicit_labels"):
        if name in fields:
            values[name] = _codes_clean(fields[name], name, errors)
    if "explicit_types" in fields:
        values["explicit_types"] = _types_clean(fields["explicit_types"], "explicit_types", errors)
    if "partner_defaults" in fields:
        partners, new = _overrides_clean(
            fields["partner_defaults"], "partner_defaults", errors, known=current.partner_defaults
        )
        unknown = sorted(set(new) - partner_slugs_known(slugs=new))
        if unknown:
            errors.add("partner_defaults", f"no partner has the slug: {', '.join(unknown)}")
        values["partner_defaults"] = partners
    if "client_defaults" in fields:
        clients, new = _overrides_clean(
            fields["client_defaults"], "client_defaults", errors, known=current.client_defaults
        )
        missing = sorted(set(new) - clients_with_grant(tenant=tenant, client_ids=new))
        if missing:
            errors.add(
                "client_defaults",
                f"no client with a grant on {tenant.slug} has the id: {', '.join(missing)}",
            )
        values["client_defaults"] = clients
    return values


def policy_update(*, tenant: Tenant, by: str, note: str, **fields: Any) -> ConsentPolicyVersion:
    """Store a new version of the tenant's consent policy: the current one with `fields`
    (ConsentPolicy's field names) changed. Versions are numbered 1, 2, ... in order;
    a change that changes nothing is refused. After commit the tenant's policy
    generation is bumped, so no cached answer of the old policy is served again."""
    by, note = by.strip(), note.strip()
    with tenant_schema(tenant):
        # Writers queue here, so two saves cannot both build on the same version; readers
        # (the pipeline's policy_current) are not blocked.
        with connection.cursor() as cursor:
            cursor.execute(f"LOCK TABLE {ConsentPolicyVersion._meta.db_table} IN EXCLUSIVE MODE")
        newest = ConsentPolicyVersion.objects.order_by("-version").first()
        current = policy_of_version(row=newest) if newest else INITIAL_POLICY
        errors = _Errors()
        if not by:
            errors.add("by", "who changes the policy must be named")
        if not note and current.version >= 1:
            errors.add("note", "say why the policy changes")
        values = _policy_clean(tenant=tenant, current=current, fields=fields, errors=errors)
        errors.raise_any()
        if values == policy_fields(policy=current):
            raise ConsentPolicyError({NON_FIELD: ["nothing changed: no new version is stored"]})
        row = ConsentPolicyVersion.objects.create(
            version=current.version + 1, created_by=by, note=note, **values
        )
        # After commit: every cached answer decided under the old policy is unreachable.
        transaction.on_commit(
            lambda: generations_changed(tenant_schema=tenant.schema_name, policy=True)
        )
    logger.info(
        "consent policy changed",
        extra={"tenant": tenant.slug, "version": row.version, "by": by},
    )
    return row


def _stated_consents_clean(consents: object, errors: _Errors) -> list[dict[str, Any]] | None:
    """Consents stated in a test must be valid R4 Consents, as a stored one would be."""
    if consents is None:
        return None
    if not isinstance(consents, list):
        errors.add("consents", "must be a list of Consent resources")
        return None
    for index, consent in enumerate(consents):
        try:
            resource_validate(content=consent, resource_type="Consent")
        except FhirError as exc:
            errors.add("consents", f"Consent {index + 1}: {exc}")
    return consents


def policy_test_create(
    *,
    tenant: Tenant,
    by: str,
    name: str,
    client_id: str,
    resource_type: str,
    expected: str,
    purpose: str = "",
    security_labels: Iterable[str] = (),
    patient_id: str = "",
    consents: list[dict[str, Any]] | None = None,
) -> PolicyTest:
    """State an expected decision for the tenant's policy tests.

    The patient situation: `patient_id` (that patient's stored Consents, read when the
    tests run), or `consents` (Consents stated here, taken as one hypothetical patient's
    own; [] is a patient without any), or neither (a resource in no patient compartment)."""
    errors = _Errors()
    name, client_id, purpose, patient_id = (
        value.strip() for value in (name, client_id, purpose, patient_id)
    )
    if not name:
        errors.add("name", "a policy test needs a name")
    if not clients_with_grant(tenant=tenant, client_ids=[client_id]):
        errors.add("client_id", f"no client with a grant on {tenant.slug} has the id {client_id!r}")
    if resource_type not in R4_RESOURCE_TYPES:
        errors.add("resource_type", f"{resource_type!r} is not an R4 resource type")
    if purpose and not _CODE.fullmatch(purpose):
        errors.add("purpose", f"{purpose!r} is not a code")
    expected = _choice_clean(expected, "expected", errors, codes=Effect)
    labels = _codes_clean(security_labels, "security_labels", errors)
    if patient_id and not id_valid(patient_id):
        errors.add("patient_id", f"{patient_id!r} is not a FHIR id")
    if patient_id and consents is not None:
        errors.add("consents", "give a stored patient or stated Consents, not both")
    stated = _stated_consents_clean(consents, errors)
    with tenant_schema(tenant):
        if name and PolicyTest.objects.filter(name=name).exists():
            errors.add("name", f"a policy test named {name!r} exists")
        errors.raise_any()
        test = PolicyTest.objects.create(
            name=name,
            client_id=client_id,
            purpose=purpose,
            resource_type=resource_type,
            security_labels=labels,
            patient_id=patient_id,
            consents=stated,
            expected=expected,
            created_by=by.strip(),
        )
    logger.info("policy test created", extra={"tenant": tenant.slug, "test": name})
    return test


def policy_test_delete(*, tenant: Tenant, test_id: int) -> None:
    """Delete one of the tenant's policy tests; an id the tenant does not hold is refused."""
    with tenant_schema(tenant):
        deleted, _ = PolicyTest.objects.filter(pk=test_id).delete()
    if not deleted:
        raise ConsentPolicyError({"test": [f"{tenant.slug} has no policy test {test_id}"]})
    logger.info("policy test deleted", extra={"tenant": tenant.slug, "test_id": test_id})
