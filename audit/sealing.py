"""Sealing: the events of ended transactions, in id order, become the next seal's block.

Run in one schema (a tenant's, or public) by the Celery beat task `audit.seal_all`, or
directly. Events are taken only from transactions that had ended when the block is taken
(their id is below the snapshot's xmin): a transaction still running may yet commit an
event with a smaller id, which then goes into a later block, never lost. One sealer (or
archiver, archiving.py) per schema at a time: trail_lock.
"""

import zlib

from django.db import connection, transaction
from django.db.backends.utils import CursorWrapper
from django.utils import timezone

from audit.chain import Tip, link, seal_digest
from audit.models import AuditArchive, AuditSeal, AuditSealEntry
from fhirplatform.schemas import schema_current

MAX_BLOCK = 5000

_UNSEALED = """
SELECT e.id, e.digest FROM audit_auditevent e
WHERE e.xact < %s
  AND NOT EXISTS (SELECT 1 FROM audit_auditsealentry s WHERE s.event_id = e.id)
ORDER BY e.id
LIMIT %s
"""


def trail_lock(cursor: CursorWrapper, schema: str) -> None:
    """One sealer or archiver per schema at a time, until the transaction ends; those of
    other schemas run freely (a stable key per schema)."""
    cursor.execute(
        "SELECT pg_advisory_xact_lock(%s)", [zlib.crc32(b"audit.seal:" + schema.encode())]
    )


def trail_tip() -> Tip:
    """Where the current schema's next seal picks up: after its last seal, or after its
    last archive's when every seal is archived."""
    last = AuditSeal.objects.order_by("-seq").first()
    if last is not None:
        return Tip(last.seq + 1, last.chain, last.digest, last.horizon)
    archive = AuditArchive.objects.order_by("-seq").first()
    if archive is not None:
        return Tip(archive.last_seal + 1, archive.chain, archive.seal_digest, archive.horizon)
    return Tip()


def audit_seal(*, max_events: int = MAX_BLOCK) -> AuditSeal | None:
    """Seal the current schema's unsealed events of ended transactions (at most
    `max_events`, the oldest first) as one block; None when there were none."""
    with transaction.atomic(), connection.cursor() as cursor:
        trail_lock(cursor, schema_current())
        cursor.execute("SELECT txid_snapshot_xmin(txid_current_snapshot())")
        (horizon,) = cursor.fetchone()
        cursor.execute(_UNSEALED, [horizon, max_events])
        events = cursor.fetchall()
        if not events:
            return None
        tip = trail_tip()
        chain = tip.chain
        for event_id, digest in events:
            chain = link(chain, event_id, digest)
        if len(events) == max_events:
            # Events of ended transactions may be left for the next block: this one cannot
            # say that every event below its horizon is sealed.
            horizon = tip.horizon
        seal = AuditSeal(
            seq=tip.seq,
            sealed_at=timezone.now(),
            horizon=horizon,
            count=len(events),
            chain_before=tip.chain,
            chain=chain,
            previous=tip.previous,
        )
        seal.digest = seal_digest(seal)
        seal.save()
        AuditSealEntry.objects.bulk_create(
            AuditSealEntry(event_id=event_id, seal_seq=seal.seq, position=position, digest=d)
            for position, (event_id, d) in enumerate(events)
        )
        return seal
