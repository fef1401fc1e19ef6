"""ORM-level proof that one tenant's rows are invisible from another tenant's schema.

Each test writes rows with ids of its own and asserts only about those, so rows other
tests committed in the shared cast tenants cannot change the answer.
"""

import uuid

import pytest
from django.db import connection
from django.utils import timezone

from fhirplatform.fhir.models import Resource
from fhirplatform.schemas import schema_activate, schema_public

pytestmark = pytest.mark.django_db


def _unique_id() -> str:
    return "iso-" + uuid.uuid4().hex[:12]


def _store_patient(logical_id: str) -> None:
    Resource.objects.create(
        resource_type="Patient",
        logical_id=logical_id,
        version_id=1,
        last_updated=timezone.now(),
        content={"resourceType": "Patient", "id": logical_id},
    )


def test_rows_written_in_tenant_a_are_invisible_from_tenant_b(cast):
    logical_id = _unique_id()
    schema_activate(cast.tenant_a)
    _store_patient(logical_id)
    assert Resource.objects.filter(logical_id=logical_id).count() == 1

    schema_activate(cast.tenant_b)
    assert not Resource.objects.filter(logical_id=logical_id).exists()


def test_each_tenant_has_its_own_table(cast):
    logical_id = _unique_id()
    schema_activate(cast.tenant_a)
    _store_patient(logical_id)
    schema_activate(cast.tenant_b)
    _store_patient(logical_id)  # no unique clash: a different table in a different schema
    assert Resource.objects.filter(logical_id=logical_id).count() == 1
    schema_activate(cast.tenant_a)
    assert Resource.objects.filter(logical_id=logical_id).count() == 1


def test_public_schema_has_no_fhir_tables(cast):
    schema_public()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_name = 'fhir_resource'"
        )
        assert cursor.fetchone()[0] == 0
