"""Sealing: the events of ended transactions, in id order, become the next seal's block.

Run in one schema (a tenant's, or public) by the Celery beat task `audit.seal_all`, or
directly. Events are taken only from transactions that had ended when the block is taken
(their id is below the snapshot's xmin): a transaction still running may yet commit an
event with a smaller id, which then goes into a later block, never lost. One sealer per
schema at a time (a transaction-scoped advisory lock).
"""

import zlib

from django.db import connection, transaction
from django.utils import timezone

from audit.chain import GENESIS, link, seal_digest
from audit.models import AuditSeal, AuditSealEntry
from fhirplatform.schemas import schema_current

MAX_BLOCK = 5000

_UNSEALED = """
SELECT e.id, e.digest FROM audit_auditevent e
WHERE e.xact < %s
  AND NOT EXISTS (SELECT 1 FROM audit_auditsealentry s WHERE s.event_id = e.id)
ORDER BY e.id
LIMIT %s
"""


def _lock_key(schema: str) -> int:
    # A stable 63-bit key per schema: one sealer per schema, sealers of others run freely.
    return zlib.crc32(b"audit.seal:" + schema.encode())


def audit_seal(*, max_events: int = MAX_BLOCK) -> AuditSeal | None:
    """Seal the current schema's unsealed events of ended transactions (at most
    `max_events`, the oldest first) as one block; None when there were none."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_lock_key(schema_current())])
        cursor.execute("SELECT txid_snapshot_xmin(txid_current_snapshot())")
        (horizon,) = cursor.fetchone()
        cursor.execute(_UNSEALED, [horizon, max_events])
        events = cursor.fetchall()
        if not events:
            return None
        last = AuditSeal.objects.order_by("-seq").first()
        chain_before = last.chain if last else GENESIS
        chain = chain_before
        for event_id, digest in events:
            chain = link(chain, event_id, digest)
        if len(events) == max_events:
            # Events of ended transactions may be left for the next block: this one cannot
            # say that every event below its horizon is sealed.
            horizon = last.horizon if last else 0
        seal = AuditSeal(
            seq=(last.seq + 1) if last else 1,
            sealed_at=timezone.now(),
            horizon=horizon,
            count=len(events),
            chain_before=chain_before,
            chain=chain,
            previous=last.digest if last else "",
        )
        seal.digest = seal_digest(seal)
        seal.save()
        AuditSealEntry.objects.bulk_create(
            AuditSealEntry(event_id=event_id, seal_seq=seal.seq, position=position, digest=d)
            for position, (event_id, d) in enumerate(events)
        )
        return seal
