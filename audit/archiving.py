"""Retention: the oldest sealed blocks leave the live trail as an archive, never silently.

An archive is a run of consecutive seals, the oldest live ones, each sealed before the
cutoff (the tenant's `audit_retention_days` ago; AUDIT_PUBLIC_RETENTION_DAYS for the
public trail), at most AUDIT_ARCHIVE_MAX_EVENTS events. Its file, under
AUDIT_ARCHIVE_DIR/<schema>/, is gzip-compressed NDJSON, one object per line:

    {"archive": {"schema", "first_seal", "last_seal", "events", "chain_before", "previous"}}
    {"seal": {"seq", "sealed_at", "horizon", "count", "chain_before", "chain", "previous",
              "digest"}}
    {"event": {"id", "xact", every recorded field as the digest spells it, "digest"},
     "position": 0, "sealed": the digest the seal holds}
    ... (the seal's events in their positions, then the next seal)

In this order: the blocks are checked (every event present and the one sealed: a
tampered block is never archived, it stays for audit_verify to name); the file is
written, synced and renamed into place; then one transaction records the AuditArchive
and deletes the blocks' events, entries and seals, which PostgreSQL allows only for rows
an archive on record covers (migration 0002). A process killed before that commit leaves
the trail as it was, and at most a file no record names; the next run of the same seals
writes it again.
"""

import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from audit.chain import GENESIS, archive_digest
from audit.digests import DIGEST_FIELDS, event_canonical, event_digest
from audit.models import AuditArchive, AuditSeal, Interaction
from audit.sealing import trail_lock
from audit.services import AuditRecord, audit_write
from fhirplatform.schemas import schema_current, tenant_or_public_schema

if TYPE_CHECKING:
    from tenants.models import Tenant

FORMAT = 1

# A seal's entries in position order, each with its event (every recorded field, in
# DIGEST_FIELDS order), or nulls where the event is gone.
_BLOCK = f"""
SELECT n.position, n.digest, e.id, e.xact, e.digest,
       {", ".join(f"e.{name}" for name in DIGEST_FIELDS)}, n.event_id
FROM audit_auditsealentry n LEFT JOIN audit_auditevent e ON e.id = n.event_id
WHERE n.seal_seq = %s ORDER BY n.position
"""
_DELETE = (
    # Events first: the database checks them against the entries that name their seals.
    "DELETE FROM audit_auditevent e USING audit_auditsealentry n "
    "WHERE n.event_id = e.id AND n.seal_seq BETWEEN %s AND %s",
    "DELETE FROM audit_auditsealentry WHERE seal_seq BETWEEN %s AND %s",
    "DELETE FROM audit_auditseal WHERE seq BETWEEN %s AND %s",
)


class ArchiveRefused(Exception):
    """The oldest blocks do not verify: they stay live for audit_verify to name."""


def archive_root() -> Path:
    return Path(settings.AUDIT_ARCHIVE_DIR)


def seal_as_dict(seal: AuditSeal) -> dict[str, Any]:
    return {
        "seq": seal.seq,
        "sealed_at": seal.sealed_at.isoformat(),
        "horizon": seal.horizon,
        "count": seal.count,
        "chain_before": seal.chain_before,
        "chain": seal.chain,
        "previous": seal.previous,
        "digest": seal.digest,
    }


def seal_from_dict(fields: dict[str, Any]) -> AuditSeal:
    """An archived seal, as an unsaved AuditSeal (what seal_digest reads)."""
    return AuditSeal(**(fields | {"sealed_at": datetime.fromisoformat(fields["sealed_at"])}))


def archive_lines(path: Path) -> Iterator[dict[str, Any]]:
    """An archive file's objects, in order."""
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            yield json.loads(line)


@dataclass
class _Due:
    seals: list[AuditSeal]
    events: int


def _due(*, cutoff: datetime, max_events: int) -> _Due | None:
    """The oldest live seals sealed before `cutoff`, at most `max_events` events (one
    seal at least: a block is never split)."""
    taken: list[AuditSeal] = []
    events = 0
    for seal in AuditSeal.objects.filter(sealed_at__lt=cutoff).order_by("seq").iterator():
        if taken and (seal.seq != taken[-1].seq + 1 or events + seal.count > max_events):
            break
        taken.append(seal)
        events += seal.count
    return _Due(taken, events) if taken else None


def _block(seal: AuditSeal) -> Iterator[dict[str, Any]]:
    """A live seal's events as archive lines; refuses a block that does not verify."""
    with connection.cursor() as cursor:
        cursor.execute(_BLOCK, [seal.seq])
        rows = cursor.fetchall()
    if len(rows) != seal.count:
        raise ArchiveRefused(f"seal {seal.seq} holds {len(rows)} entries, not {seal.count}")
    for expected, row in enumerate(rows):
        position, sealed, event_id, xact, digest, *values, named_id = row
        if event_id is None:
            raise ArchiveRefused(f"event {named_id} of seal {seal.seq} is missing")
        event = event_canonical(dict(zip(DIGEST_FIELDS, values, strict=True)))
        if position != expected or digest != sealed or event_digest(event) != digest:
            raise ArchiveRefused(f"event {event_id} is not the event seal {seal.seq} holds")
        yield {
            "event": {"id": event_id, "xact": xact, **event, "digest": digest},
            "position": position,
            "sealed": sealed,
        }


def _file_write(path: Path, header: dict[str, Any], seals: list[AuditSeal]) -> tuple[str, int]:
    """Write the archive file (synced, then renamed into place); its sha256 and size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as raw:
            # mtime 0: the same seals make the same bytes, whichever run writes them.
            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as packed:

                def put(line: dict[str, Any]) -> None:
                    packed.write(json.dumps(line, ensure_ascii=False).encode() + b"\n")

                put({"archive": header})
                for seal in seals:
                    put({"seal": seal_as_dict(seal)})
                    for line in _block(seal):
                        put(line)
            raw.flush()
            os.fsync(raw.fileno())
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return file_sha256(path), path.stat().st_size


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as archived:
        for chunk in iter(lambda: archived.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def retention_cutoff(tenant: "Tenant | None", now: datetime) -> datetime:
    """Blocks sealed before this have outlived the trail's retention: the tenant's
    audit_retention_days, or AUDIT_PUBLIC_RETENTION_DAYS for the public trail (None)."""
    days = tenant.audit_retention_days if tenant else settings.AUDIT_PUBLIC_RETENTION_DAYS
    return now - timedelta(days=days)


def trail_archives(
    *, tenant: "Tenant | None", cutoff: datetime, actor: str
) -> Iterator[AuditArchive]:
    """Archive the trail's blocks sealed before `cutoff` (the tenant's, or public for None),
    one archive (one transaction) at a time, yielding each. Raises ArchiveRefused when the
    oldest blocks do not verify; the archives before it stay made."""
    while True:
        with tenant_or_public_schema(tenant):
            archive = audit_archive(
                cutoff=cutoff, actor=actor, tenant=tenant.slug if tenant else ""
            )
        if archive is None:
            return
        yield archive


def audit_archive(
    *, cutoff: datetime, actor: str, tenant: str = "", max_events: int | None = None
) -> AuditArchive | None:
    """Archive the current schema's oldest seals sealed before `cutoff` (one archive, at
    most `max_events` events); None when none are due. Raises ArchiveRefused when those
    blocks do not verify.

    The archiving is a governance action: the public trail records it (`actor`, the
    trail's `tenant` slug) in the same transaction."""
    schema = schema_current()
    limit = max_events or settings.AUDIT_ARCHIVE_MAX_EVENTS
    with transaction.atomic(), connection.cursor() as cursor:
        trail_lock(cursor, schema)
        due = _due(cutoff=cutoff, max_events=limit)
        if due is None:
            return None
        last = AuditArchive.objects.order_by("-seq").first()
        first, final = due.seals[0], due.seals[-1]
        if first.seq != (last.last_seal + 1 if last else 1) or first.chain_before != (
            last.chain if last else GENESIS
        ):
            raise ArchiveRefused(f"seal {first.seq} does not follow the last archive")
        relative = f"{schema}/{schema}-seals-{first.seq:09d}-{final.seq:09d}.ndjson.gz"
        header = {
            "format": FORMAT,
            "schema": schema,
            "first_seal": first.seq,
            "last_seal": final.seq,
            "events": due.events,
            "chain_before": first.chain_before,
            "previous": first.previous,
        }
        sha256, size = _file_write(archive_root() / relative, header, due.seals)
        archive = AuditArchive(
            seq=(last.seq + 1) if last else 1,
            archived_at=timezone.now(),
            first_seal=first.seq,
            last_seal=final.seq,
            events=due.events,
            horizon=final.horizon,
            chain_before=first.chain_before,
            chain=final.chain,
            seal_digest=final.digest,
            path=relative,
            sha256=sha256,
            size=size,
            previous=last.digest if last else "",
        )
        archive.digest = archive_digest(archive)
        archive.save()
        for statement in _DELETE:
            cursor.execute(statement, [first.seq, final.seq])
        audit_write(
            record=AuditRecord(
                recorded=archive.archived_at,
                interaction=Interaction.ADMIN,
                status=200,
                tenant=tenant,
                actor=actor,
                resource_type="AuditArchive",
                resource_id=f"{schema}/{archive.seq}",
                query=f"seals {first.seq}-{final.seq}, {due.events} events: {relative}",
                outcome="archived",
            ),
            schema="public",
        )
        return archive
