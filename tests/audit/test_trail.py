"""The audit table: what a written event holds, and that PostgreSQL refuses every change
to it, from the application's own connection, in a tenant's schema and in public."""

from contextlib import nullcontext
from datetime import UTC, datetime

import pytest
from django.conf import settings
from django.db import connection, transaction
from django.db.utils import IntegrityError

from audit.digests import event_digest
from audit.models import AuditEvent, Interaction
from audit.services import MAX_QUERY, AuditRecord, audit_write
from fhirplatform.schemas import schema_public, tenant_schema
from tests.audit.trail_support import TRAIL_REFUSES


def _record(**changes: object) -> AuditRecord:
    fields: dict[str, object] = {
        "recorded": datetime.now(UTC),
        "interaction": Interaction.SEARCH,
        "status": 200,
        "request_id": "req-1",
        "tenant": "provider-a",
        "client_id": "client-a",
        "partner": "acme",
        "source_address": "192.0.2.7",
        "resource_type": "Observation",
        "patients": ("p2", "p1", "p2"),
        "query": "patient=p1&code=8867-4",
        "purpose": "TREAT",
        "consent": "permit",
        "consent_basis": "policy v3",
        "scopes": "system/*.rs",
        "latency_us": 2_345,
    }
    fields.update(changes)
    return AuditRecord(**fields)  # type: ignore[arg-type]


def _row_fields(event: AuditEvent) -> dict[str, object]:
    return {f.name: getattr(event, f.name) for f in AuditEvent._meta.concrete_fields}


def test_an_event_is_stored_as_written_with_its_digest_and_transaction(db, cast):
    with tenant_schema(cast.tenant_a):
        written = audit_write(record=_record(), schema=cast.tenant_a.schema_name)
        with connection.cursor() as cursor:
            cursor.execute("SELECT txid_current()")
            (xact,) = cursor.fetchone()
        stored = AuditEvent.objects.get(pk=written)
    fields = _row_fields(stored)
    assert fields["patients"] == ["p1", "p2"]  # one entity per patient, in one order
    assert fields["release"] == settings.CODE_RELEASE and settings.CODE_RELEASE
    assert stored.xact == xact  # set by PostgreSQL: the writing transaction
    assert stored.digest == event_digest(fields)  # the row read back gives the same digest


def test_what_cannot_be_stored_as_sent_is_recorded_cut_or_replaced(db, cast):
    with tenant_schema(cast.tenant_a):
        query = "a\x00b" + "x" * (2 * MAX_QUERY)
        event = audit_write(record=_record(query=query), schema=cast.tenant_a.schema_name)
        stored = AuditEvent.objects.get(pk=event)
    assert stored.query.startswith("a\ufffdb") and stored.query.endswith("[cut]")
    assert len(stored.query) == MAX_QUERY
    assert stored.digest == event_digest(_row_fields(stored))


REFUSED = [
    "UPDATE audit_auditevent SET status = 500",
    "DELETE FROM audit_auditevent",
    "TRUNCATE audit_auditevent",
]


@pytest.mark.parametrize("statement", REFUSED)
@pytest.mark.parametrize("where", ["tenant", "public"])
def test_postgresql_refuses_every_change_from_the_applications_connection(
    db, cast, statement, where
):
    schema_public()
    with tenant_schema(cast.tenant_a) if where == "tenant" else nullcontext():
        schema = cast.tenant_a.schema_name if where == "tenant" else "public"
        audit_write(record=_record(), schema=schema)
        before = AuditEvent.objects.count()
        with (
            pytest.raises(IntegrityError, match=TRAIL_REFUSES),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(statement)
        with (
            pytest.raises(IntegrityError, match=TRAIL_REFUSES),
            transaction.atomic(),
        ):
            AuditEvent.objects.all().update(status=418)
        with (
            pytest.raises(IntegrityError, match=TRAIL_REFUSES),
            transaction.atomic(),
        ):
            AuditEvent.objects.all().delete()
        assert AuditEvent.objects.count() == before
        assert not AuditEvent.objects.filter(status__in=[418, 500]).exists()


def test_a_tenants_events_are_in_its_own_schema_only(db, cast):
    with tenant_schema(cast.tenant_a):
        mine = audit_write(record=_record(request_id="only-in-a"), schema=cast.tenant_a.schema_name)
    with tenant_schema(cast.tenant_b):
        assert not AuditEvent.objects.filter(request_id="only-in-a").exists()
    schema_public()
    assert not AuditEvent.objects.filter(request_id="only-in-a").exists()
    with tenant_schema(cast.tenant_a):
        assert AuditEvent.objects.filter(pk=mine, request_id="only-in-a").exists()
