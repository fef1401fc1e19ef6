"""Retention: sealed blocks older than a trail's retention leave the live tables only as
an archive (a compressed NDJSON file and its record), which audit_verify --archive checks
and the live chain continues from; PostgreSQL refuses any other way out."""

import gzip
import json
import os
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.utils import IntegrityError
from django.test import Client
from django.urls import reverse

from audit.archiving import ArchiveRefused, archive_lines, audit_archive
from audit.models import AuditArchive, AuditEvent, AuditSeal
from audit.tasks import audit_archive_due
from fhirplatform.schemas import schema_public, tenant_schema
from tenants.models import Tenant
from tenants.services import tenant_update
from tests.audit.trail_support import (
    TRAIL_REFUSES,
    as_superuser_without_triggers,
    events_write,
    trail_sealed,
    trail_verified,
)

SOON = datetime.now(UTC) + timedelta(days=1)  # every seal of a test was sealed before it


@pytest.fixture(autouse=True)
def archive_dir(settings: Any, tmp_path: Path) -> Path:
    settings.AUDIT_ARCHIVE_DIR = str(tmp_path / "archives")
    return tmp_path / "archives"


def _archived(tenant: Tenant, cutoff: datetime = SOON, **options: Any) -> AuditArchive | None:
    with tenant_schema(tenant):
        return audit_archive(cutoff=cutoff, actor="test", tenant=tenant.slug, **options)


def _live(tenant: Tenant) -> tuple[int, list[int]]:
    with tenant_schema(tenant):
        seals = list(AuditSeal.objects.order_by("seq").values_list("seq", flat=True))
        return AuditEvent.objects.count(), seals


def _verify_command(tenant: Tenant) -> tuple[int, dict[str, Any]]:
    out = StringIO()
    try:
        call_command("audit_verify", "--tenant", tenant.slug, "--archive", "--json", stdout=out)
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return code, json.loads(out.getvalue())


def _two_blocks_and_a_tail(tenant: Tenant) -> list[int]:
    ids = events_write(tenant, 3)
    trail_sealed(tenant)
    ids += events_write(tenant, 2)
    trail_sealed(tenant)
    return ids + events_write(tenant, 1)  # not sealed: never archived


def test_old_blocks_leave_as_an_archive_and_the_chain_continues(tenant, archive_dir):
    ids = _two_blocks_and_a_tail(tenant)
    archive = _archived(tenant)
    assert archive is not None
    assert (archive.seq, archive.first_seal, archive.last_seal, archive.events) == (1, 1, 2, 5)
    assert archive.path.startswith(f"{tenant.schema_name}/")  # the tenant's own directory
    assert _live(tenant) == (1, [])  # the unsealed event stays

    lines = list(archive_lines(archive_dir / archive.path))
    assert lines[0]["archive"]["first_seal"] == 1 and lines[0]["archive"]["events"] == 5
    assert [line["seal"]["seq"] for line in lines if "seal" in line] == [1, 2]
    assert [line["event"]["id"] for line in lines if "event" in line] == ids[:5]

    # New blocks chain on from the archive: the trail and the file verify.
    trail_sealed(tenant)
    events_write(tenant, 2)
    trail_sealed(tenant)
    report = trail_verified(tenant, files=True)
    assert report.ok, report.problems
    assert (report.archives, report.archived_events, report.seals, report.events) == (1, 5, 2, 3)
    code, printed = _verify_command(tenant)
    assert code == 0 and printed["archives"] == 1 and printed["archived_events"] == 5

    # And they are archived in their turn, the second archive after the first.
    second = _archived(tenant)
    assert second is not None and (second.first_seal, second.last_seal) == (3, 4)
    assert second.previous == archive.digest and second.chain_before == archive.chain
    assert trail_verified(tenant, files=True).ok
    assert _archived(tenant) is None  # nothing left that is due


def test_retention_decides_what_is_due(tenant):
    _two_blocks_and_a_tail(tenant)
    assert _archived(tenant, cutoff=datetime.now(UTC) - timedelta(days=1)) is None
    assert _live(tenant) == (6, [1, 2])

    # The daily task: the tenant's retention, counted back from its `now`.
    tenant_update(tenant=tenant, audit_retention_days=30)
    assert audit_archive_due(now=datetime.now(UTC), actor="test")[tenant.slug] == 0
    archived = audit_archive_due(now=datetime.now(UTC) + timedelta(days=31), actor="test")
    assert archived[tenant.slug] == 5
    assert _live(tenant) == (1, [])


def test_an_archive_holds_whole_blocks_up_to_the_limit(tenant):
    _two_blocks_and_a_tail(tenant)
    first = _archived(tenant, max_events=4)  # seal 1 (3 events) fits, seal 2 would not
    assert first is not None and (first.first_seal, first.last_seal, first.events) == (1, 1, 3)
    single = _archived(tenant, max_events=1)  # a block larger than the limit goes alone
    assert single is not None and (single.first_seal, single.last_seal) == (2, 2)
    assert trail_verified(tenant, files=True).ok


def test_the_archiving_is_recorded_in_the_public_trail(tenant):
    _two_blocks_and_a_tail(tenant)
    archive = _archived(tenant)
    assert archive is not None
    schema_public()
    event = AuditEvent.objects.filter(resource_type="AuditArchive").order_by("-id").first()
    assert event is not None
    assert (event.tenant, event.actor, event.outcome) == (tenant.slug, "test", "archived")
    assert event.resource_id == f"{tenant.schema_name}/1"
    assert "seals 1-2, 5 events" in event.query


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM audit_auditevent",
        "DELETE FROM audit_auditsealentry",
        "DELETE FROM audit_auditseal",
        "UPDATE audit_auditarchive SET events = 0",
        "DELETE FROM audit_auditarchive",
        "TRUNCATE audit_auditarchive",
        "TRUNCATE audit_auditevent",
    ],
)
def test_nothing_leaves_but_what_an_archive_covers(tenant, statement):
    _two_blocks_and_a_tail(tenant)
    assert _archived(tenant, cutoff=SOON, max_events=3) is not None  # seal 1 only
    with (
        pytest.raises(IntegrityError, match=TRAIL_REFUSES),
        tenant_schema(tenant),
        connection.cursor() as cursor,
    ):
        cursor.execute(statement)
    assert _live(tenant) == (3, [2])
    assert trail_verified(tenant, files=True).ok


def test_a_missing_or_altered_file_is_named(tenant, archive_dir):
    _two_blocks_and_a_tail(tenant)
    archive = _archived(tenant)
    assert archive is not None
    path = archive_dir / archive.path

    lines = list(archive_lines(path))
    event = next(line for line in lines if "event" in line)
    event["event"]["status"] = 404  # someone edits an archived event
    with gzip.open(path, "wt", encoding="utf-8") as rewritten:
        rewritten.writelines(json.dumps(line) + "\n" for line in lines)
    code, printed = _verify_command(tenant)
    assert code == 1
    assert printed["first_problem"] == "archive 1: its file was altered (not the bytes archived)"
    assert f"archive 1: event {event['event']['id']} was altered" in printed["problems"]

    path.write_bytes(b"\x1f\x8b not gzip at all")  # or its bytes are garbage
    problems = trail_verified(tenant, files=True).problems
    assert "archive 1: its file cannot be read (BadGzipFile)" in problems

    os.remove(path)
    problems = trail_verified(tenant, files=True).problems
    assert problems == [f"archive 1: its file {path} is missing"]
    assert trail_verified(tenant).ok  # without --archive the records alone are checked


def test_a_forged_archive_record_does_not_verify(tenant):
    """Someone who may insert (not a superuser) records an archive no file backs, to
    delete the events it claims: the record is outside the chain and names no file."""
    _two_blocks_and_a_tail(tenant)
    with tenant_schema(tenant):
        seal = AuditSeal.objects.get(seq=1)
        AuditArchive.objects.create(
            seq=1,
            archived_at=datetime.now(UTC),
            first_seal=1,
            last_seal=1,
            events=3,
            horizon=seal.horizon,
            chain_before=seal.chain_before,
            chain=seal.chain,
            seal_digest=seal.digest,
            path="forged.ndjson.gz",
            sha256="0" * 64,
            size=0,
            digest="not computed",
        )
        with connection.cursor() as cursor:
            cursor.execute(
                "DELETE FROM audit_auditevent WHERE id IN "
                "(SELECT event_id FROM audit_auditsealentry WHERE seal_seq = 1)"
            )
    problems = trail_verified(tenant, files=True).problems
    assert "archive 1 was altered" in problems
    assert any(problem.startswith("archive 1: its file") for problem in problems)


def test_a_tampered_block_is_not_archived(tenant, archive_dir):
    ids = _two_blocks_and_a_tail(tenant)
    as_superuser_without_triggers(
        tenant, ("UPDATE audit_auditevent SET status = 500 WHERE id = %s", [ids[1]])
    )
    with pytest.raises(ArchiveRefused, match=f"event {ids[1]} is not the event seal 1 holds"):
        _archived(tenant)
    assert _live(tenant) == (6, [1, 2])  # everything stays for audit_verify to name
    assert not list(archive_dir.rglob("*.ndjson.gz*"))  # and no file is left behind
    with pytest.raises(CommandError, match="not archived"):
        call_command("audit_archive", "--tenant", tenant.slug, "--before", "2999-01-01")


def test_the_command_archives_by_retention_or_date(tenant):
    _two_blocks_and_a_tail(tenant)
    out = StringIO()
    call_command("audit_archive", "--tenant", tenant.slug, stdout=out)
    assert "0 archive(s) written" in out.getvalue()  # retention: six years
    call_command("audit_archive", "--tenant", tenant.slug, "--before", "2999-01-01", stdout=out)
    assert "archive 1: seals 1-2, 5 events" in out.getvalue()
    with pytest.raises(CommandError, match="not an ISO"):
        call_command("audit_archive", "--tenant", tenant.slug, "--before", "soon")
    with pytest.raises(CommandError, match="no tenant"):
        call_command("audit_archive", "--tenant", "no-such-tenant")


def test_the_admin_trail_page_lists_the_archives(tenant):
    _two_blocks_and_a_tail(tenant)
    archive = _archived(tenant)
    assert archive is not None
    operator = User.objects.create_superuser(f"archivist-{tenant.slug}", password="pw-x")
    browser = Client()
    browser.force_login(operator)
    page = browser.get(reverse("admin:tenants_tenant_audit_trail", args=[tenant.pk]))
    html = page.content.decode()
    assert page.status_code == 200
    assert "<td>1\N{EN DASH}2</td><td>5</td>" in html and archive.path in html
