"""Events written just after their answer: the requests the refusal gate answers 429
before Django runs (fhirplatform/fhir/gate.py).

The gate answers a flood with no database or Redis call, so that a client ignoring
Retry-After cannot spend the platform's capacity; writing each refused request's event
before its 429 left would hand that capacity back to the flood. Such a request shows and
changes nothing. So its event (one per request, like every other) is queued in the
process and a flusher thread writes the queue once a second
(AUDIT_DEFERRED_FLUSH_SECONDS), many rows per INSERT; what is queued when the process
exits is written then.

The queue is bounded (AUDIT_DEFERRED_MAX_EVENTS): past it, a trail's refusals are counted
instead of queued, and the next flush writes one event saying how many were not recorded
one by one (outcome `throttled/uncounted`, never a silent gap). A process killed outright
loses at most one flush interval of them.
"""

import threading
from collections import Counter

from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from audit.models import Interaction
from audit.services import AuditRecord, audit_write_many
from fhirplatform.flushing import BackgroundFlusher

UNRECORDED = "throttled/uncounted"


class DeferredEvents:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queued: list[tuple[str, AuditRecord]] = []
        self._overflow: Counter[tuple[str, str]] = Counter()  # (schema, tenant slug)
        self._flusher = BackgroundFlusher(
            self.flush,
            name="audit-deferred",
            every=lambda: settings.AUDIT_DEFERRED_FLUSH_SECONDS,
            what="audit: events of requests refused before the pipeline",
        )

    def _queue(self, schema: str, record: AuditRecord) -> None:
        """Queue one event, or count it past the bound (the caller holds the lock). A
        trail's count of unqueued refusals always goes in: there is one per trail."""
        if record.outcome == UNRECORDED or len(self._queued) < settings.AUDIT_DEFERRED_MAX_EVENTS:
            self._queued.append((schema, record))
        else:
            self._overflow[(schema, record.tenant)] += 1

    def add(self, *, record: AuditRecord, schema: str) -> None:
        with self._lock:
            self._queue(schema, record)
            if settings.AUDIT_DEFERRED_BACKGROUND_FLUSH:
                self._flusher.start()

    def flush(self) -> int:
        """Write what is queued now, trail by trail (INSERT_ROWS to a statement); the events
        written. What the database refuses stays queued for the next flush."""
        with self._lock:
            queued, self._queued = self._queued, []
            overflow, self._overflow = self._overflow, Counter()
        by_schema: dict[str, list[AuditRecord]] = {}
        for schema, record in queued:
            by_schema.setdefault(schema, []).append(record)
        for (schema, tenant), count in overflow.items():
            by_schema.setdefault(schema, []).append(
                AuditRecord(
                    recorded=timezone.now(),
                    interaction=Interaction.READ,
                    status=429,
                    tenant=tenant,
                    query=f"{count} requests refused before the pipeline, not recorded one "
                    "by one (AUDIT_DEFERRED_MAX_EVENTS)",
                    outcome=UNRECORDED,
                )
            )
        written, failure = 0, None
        for schema, records in by_schema.items():
            try:
                audit_write_many(records=records, schema=schema)
            except DatabaseError as error:
                self._requeue(schema, records)  # the next flush tries them again
                failure = error
                continue
            written += len(records)
        if failure is not None:
            raise failure
        return written

    def _requeue(self, schema: str, records: list[AuditRecord]) -> None:
        with self._lock:
            for record in records:
                self._queue(schema, record)


_deferred = DeferredEvents()


def audit_deferred(*, record: AuditRecord, schema: str) -> None:
    """Queue an event of a request answered without Django; written within a second."""
    _deferred.add(record=record, schema=schema)


def audit_deferred_flush() -> int:
    """Write the queued events now; the number written."""
    return _deferred.flush()
