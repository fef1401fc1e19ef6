"""The events written just after their answer (audit/deferred.py, the refusal gate's): a
trail the database refuses keeps its events queued and does not hold up the others; past
the queue's bound, refusals are counted and the count is recorded."""

from datetime import UTC, datetime

import pytest
from django.db import DatabaseError

from audit import deferred
from audit.models import AuditEvent, Interaction
from audit.services import AuditRecord
from fhirplatform.schemas import tenant_schema


@pytest.fixture(autouse=True)
def empty_queue(settings):
    settings.AUDIT_DEFERRED_BACKGROUND_FLUSH = False  # this test flushes
    deferred._deferred._queued.clear()
    deferred._deferred._overflow.clear()
    yield
    deferred._deferred._queued.clear()
    deferred._deferred._overflow.clear()


def _refused(tenant_slug: str, request_id: str) -> AuditRecord:
    return AuditRecord(
        recorded=datetime.now(UTC),
        interaction=Interaction.READ,
        status=429,
        request_id=request_id,
        tenant=tenant_slug,
        outcome="throttled/client-rate",
    )


def test_a_refused_trail_stays_queued_and_the_others_are_written(tenant):
    deferred.audit_deferred(record=_refused("gone", "lost-1"), schema="t_no_such_tenant")
    deferred.audit_deferred(record=_refused(tenant.slug, "kept-1"), schema=tenant.schema_name)
    with pytest.raises(DatabaseError):
        deferred.audit_deferred_flush()
    with tenant_schema(tenant):
        assert list(AuditEvent.objects.values_list("request_id", flat=True)) == ["kept-1"]
    assert [schema for schema, _ in deferred._deferred._queued] == ["t_no_such_tenant"]


def test_past_the_bound_refusals_are_counted_and_the_count_recorded(tenant, settings):
    settings.AUDIT_DEFERRED_MAX_EVENTS = 2
    for number in range(5):
        record = _refused(tenant.slug, f"r{number}")
        deferred.audit_deferred(record=record, schema=tenant.schema_name)
    assert deferred.audit_deferred_flush() == 3
    with tenant_schema(tenant):
        events = list(AuditEvent.objects.order_by("id"))
    assert [event.request_id for event in events] == ["r0", "r1", ""]
    assert events[2].outcome == deferred.UNRECORDED
    assert events[2].query.startswith("3 requests refused before the pipeline")
