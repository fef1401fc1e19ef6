"""Sealing and audit_verify: a clean trail verifies; an edit, a deletion, an insertion or a
reorder made by a superuser with the triggers off is named; an event of a transaction
still running is sealed only once it has ended.

Each test has a tenant of its own (conftest.py): the tampering stays."""

import json
import threading
from datetime import UTC, datetime
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, connections
from django.db.utils import IntegrityError

from audit.digests import event_digest
from audit.models import AuditEvent, Interaction
from audit.services import AuditRecord, audit_write
from audit.tasks import audit_seal_all
from audit.verification import audit_verify
from fhirplatform.schemas import schema_public, tenant_schema
from tenants.models import Tenant
from tests.audit.trail_support import (
    TRAIL_REFUSES,
    as_superuser_without_triggers,
    events_write,
    trail_sealed,
    trail_verified,
)


def _command(tenant: Tenant) -> tuple[int, dict[str, Any]]:
    out = StringIO()
    try:
        call_command("audit_verify", "--tenant", tenant.slug, "--json", stdout=out)
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return code, json.loads(out.getvalue())


def test_a_clean_trail_is_sealed_in_blocks_and_verifies(tenant):
    events_write(tenant, 5)
    first = trail_sealed(tenant)
    events_write(tenant, 3)
    second = trail_sealed(tenant)
    assert first is not None and (first.seq, first.count) == (1, 5)
    assert second is not None and (second.seq, second.count) == (2, 3)
    assert second.previous == first.digest and second.chain_before == first.chain
    assert trail_sealed(tenant) is None  # nothing left

    events_write(tenant, 2)  # the unsealed tail is checked, and counted
    report = trail_verified(tenant)
    assert report.ok, report.problems
    assert (report.events, report.seals, report.unsealed) == (10, 2, 2)
    code, printed = _command(tenant)
    assert code == 0 and printed["ok"] and printed["events_per_second"] > 0


def test_an_edit_is_named_whether_or_not_the_digest_was_made_again(tenant):
    ids = events_write(tenant, 4)
    trail_sealed(tenant)
    as_superuser_without_triggers(
        tenant, ("UPDATE audit_auditevent SET status = 404 WHERE id = %s", [ids[1]])
    )
    code, printed = _command(tenant)
    assert code == 1 and printed["first_problem"] == f"event {ids[1]} was altered"

    # The forger makes the digest again: the seal still knows the one it sealed.
    with tenant_schema(tenant):
        row = AuditEvent.objects.values().get(pk=ids[2])
    forged = event_digest(row | {"patients": ["someone-else"]})
    as_superuser_without_triggers(
        tenant,
        (
            "UPDATE audit_auditevent SET patients = %s, digest = %s WHERE id = %s",
            [["someone-else"], forged, ids[2]],
        ),
    )
    problems = trail_verified(tenant).problems
    assert f"event {ids[2]} is not the event sealed (seal 1): altered, replaced or moved" in (
        problems
    )
    assert problems[0] == f"event {ids[1]} was altered"


def test_a_deletion_an_insertion_and_a_reorder_are_named(tenant):
    ids = events_write(tenant, 5)
    trail_sealed(tenant)
    as_superuser_without_triggers(tenant, ("DELETE FROM audit_auditevent WHERE id = %s", [ids[0]]))
    assert trail_verified(tenant).problems == [f"event {ids[0]} was deleted (seal 1)"]

    with tenant_schema(tenant):
        row = AuditEvent.objects.values().get(pk=ids[1])
    planted = {k: v for k, v in row.items() if k != "id"} | {"request_id": "planted"}
    planted["digest"] = event_digest(planted)
    columns = ", ".join(planted)
    marks = ", ".join(["%s"] * len(planted))
    as_superuser_without_triggers(
        tenant,
        (f"INSERT INTO audit_auditevent ({columns}) VALUES ({marks})", list(planted.values())),
    )
    with tenant_schema(tenant):
        planted_id = AuditEvent.objects.get(request_id="planted").pk
    assert f"event {planted_id} was inserted: in no seal" in trail_verified(tenant).problems

    # Two events swap places (their ids), each digest still its own row's.
    as_superuser_without_triggers(
        tenant,
        ("UPDATE audit_auditevent SET id = -1 WHERE id = %s", [ids[3]]),
        ("UPDATE audit_auditevent SET id = %s WHERE id = %s", [ids[3], ids[4]]),
        ("UPDATE audit_auditevent SET id = %s WHERE id = -1", [ids[4]]),
    )
    problems = trail_verified(tenant).problems
    for moved in (ids[3], ids[4]):
        assert f"event {moved} is not the event sealed (seal 1): altered, replaced or moved" in (
            problems
        )


def test_an_altered_seal_is_named(tenant):
    events_write(tenant, 2)
    trail_sealed(tenant)
    events_write(tenant, 2)
    trail_sealed(tenant)
    as_superuser_without_triggers(
        tenant, ("UPDATE audit_auditseal SET count = 1 WHERE seq = 1", [])
    )
    problems = trail_verified(tenant).problems
    assert "seal 1 was altered" in problems and "seal 1: its block does not chain" in problems


def test_an_event_of_a_running_transaction_waits_for_the_next_seal(tenant):
    events_write(tenant, 1)
    written, commit = threading.Event(), threading.Event()

    def slow_writer() -> None:
        try:
            with tenant_schema(tenant):  # one transaction, held open
                _write_one(tenant.schema_name)
                written.set()
                commit.wait(10)
        finally:
            connections.close_all()

    thread = threading.Thread(target=slow_writer)
    thread.start()
    assert written.wait(10)
    first = trail_sealed(tenant)
    assert first is not None and first.count == 1  # the running transaction's is not in it
    commit.set()
    thread.join(10)
    second = trail_sealed(tenant)
    assert second is not None and second.count == 1
    report = trail_verified(tenant)
    assert report.ok and (report.events, report.unsealed) == (2, 0)


def _write_one(schema: str, interaction: Interaction = Interaction.SEARCH) -> None:
    record = AuditRecord(recorded=datetime.now(UTC), interaction=interaction, status=200)
    audit_write(record=record, schema=schema)


def test_the_task_seals_every_trail(tenant):
    events_write(tenant, 3)
    _write_one("public", Interaction.TOKEN)
    sealed = audit_seal_all()
    assert sealed[tenant.slug] == 3 and sealed["public"] >= 1
    assert trail_verified(tenant).ok
    schema_public()
    assert audit_verify(schema="public").ok


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_auditseal SET count = 0",
        "DELETE FROM audit_auditseal",
        "TRUNCATE audit_auditseal",
        "UPDATE audit_auditsealentry SET position = 9",
        "DELETE FROM audit_auditsealentry",
        "TRUNCATE audit_auditsealentry",
    ],
)
def test_seals_and_their_entries_are_append_only_too(tenant, statement):
    events_write(tenant, 2)
    trail_sealed(tenant)
    with (
        pytest.raises(IntegrityError, match=TRAIL_REFUSES),
        tenant_schema(tenant),
        connection.cursor() as cursor,
    ):
        cursor.execute(statement)
    assert trail_verified(tenant).ok


def test_an_export_holds_the_period_of_one_trail_and_is_recorded(tenant, cast, tmp_path):
    ids = events_write(tenant, 3)
    with tenant_schema(cast.tenant_b):  # another tenant's events of the same period
        audit_write(
            record=AuditRecord(
                recorded=datetime.now(UTC), interaction=Interaction.READ, status=200
            ),
            schema=cast.tenant_b.schema_name,
        )
    out = tmp_path / "events.ndjson"
    today = datetime.now(UTC).date()
    call_command(
        "audit_export",
        "--tenant",
        tenant.slug,
        "--since",
        str(today),
        "--until",
        f"{today.isoformat()}T23:59:59.999999+00:00",
        "--output",
        str(out),
        stderr=StringIO(),
    )
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    exported = [line["id"] for line in lines if line["interaction"] == "read"]
    assert exported == ids
    assert all(event_digest(line) == line["digest"] for line in lines)
    # The export was recorded before it read the trail: it is in the export itself.
    with tenant_schema(tenant):
        recorded = AuditEvent.objects.filter(interaction="export").get()
    assert recorded.resource_type == "AuditEvent" and recorded.actor
    assert [line["interaction"] for line in lines].count("export") == 1


def test_an_export_refuses_a_bad_period(tenant):
    with pytest.raises(CommandError, match="not an ISO"):
        call_command("audit_export", "--tenant", tenant.slug, "--since", "x", "--until", "y")
    with pytest.raises(CommandError, match="after"):
        period = ["--since", "2026-02-01", "--until", "2026-01-01"]
        call_command("audit_export", "--tenant", tenant.slug, *period)
