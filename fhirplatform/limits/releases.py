"""Releases waiting for a ride: a finished request's slots are given back in the process's
next admission (the same EVALSHA), not in a round trip of their own.

A process that goes quiet must not sit on slots (the client's next request may land on
another process), so a flusher thread sends whatever is still queued once its oldest
release is LIMITS_RELEASE_DELAY_MS old, all of it in one call. A slot is thus freed later
than the request ended, never earlier: a concurrency cap stays exact or errs on the strict
side. A release that cannot be sent (Redis down) waits for the next attempt; its lease
expires in Redis anyway, so one dropped at the queue's cap or past its lease leaks nothing.
"""

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings

from fhirplatform.limits import metrics

logger = logging.getLogger(__name__)

# Releases kept while Redis is unreachable; beyond, the oldest go (their leases expire).
MAX_PENDING = 10_000


@dataclass(frozen=True)
class PendingRelease:
    lease_id: str
    slot_keys: tuple[str, ...]
    bad: bool  # slow or a server error: cuts the adaptive limit
    queued_at: float  # time.monotonic()
    lease_ends: float  # time.monotonic() when Redis drops the lease on its own


def release_delay_seconds() -> float:
    return float(settings.LIMITS_RELEASE_DELAY_MS) / 1000


class ReleaseQueue:
    """The process's queued releases and the flusher thread that sends the ones no
    admission picked up. `send` delivers a batch in one call; False if it could not."""

    def __init__(self, send: Callable[[list[PendingRelease]], bool]) -> None:
        self._send = send
        self._start_afresh()
        # gunicorn forks workers after import: a child owns neither its parent's releases
        # nor its thread, and a lock some other thread held at the fork would stay held.
        os.register_at_fork(after_in_child=self._start_afresh)

    def _start_afresh(self) -> None:
        self._ready = threading.Condition()
        # Held by whoever sends what it took from the queue (the flusher, a flush), so a
        # flush returns only once what the flusher took is in Redis too. Taken first,
        # `_ready` second.
        self._sending = threading.Lock()
        self._pending: list[PendingRelease] = []
        self._flusher: threading.Thread | None = None
        # When the flusher wakes on its own (never, while nothing is queued): a release
        # due before then wakes it. Under load the flusher sleeps until the oldest queued
        # release is due and looks again, so a request queues its release without waking
        # a thread.
        self._flusher_wakes_at = math.inf
        self._hold_until = 0.0

    def put(self, release: PendingRelease) -> None:
        with self._ready:
            self._pending.append(release)
            if self._flusher is None or not self._flusher.is_alive():
                # Started lazily, in the process that queues: a thread started before
                # a fork does not exist in the child.
                self._flusher = threading.Thread(
                    target=self._run, name="limits-releases", daemon=True
                )
                self._flusher.start()
            due = release.queued_at + release_delay_seconds()
            if due < self._flusher_wakes_at:
                # Woken, it looks at the queue at once and sleeps until the oldest is due.
                self._flusher_wakes_at = due
                self._ready.notify()

    def take(self) -> list[PendingRelease]:
        """Everything queued, for the caller to send (and to give back if it cannot)."""
        if not self._pending:  # unlocked peek: a release missed here goes with the flusher
            return []
        with self._ready:
            taken, self._pending = self._pending, []
        return taken

    def give_back(self, releases: list[PendingRelease]) -> None:
        """A send failed: the releases queue again ahead of newer ones, except those whose
        lease Redis has dropped by now."""
        now = time.monotonic()
        live = [r for r in releases if r.lease_ends > now]
        with self._ready:
            self._pending[:0] = live
            dropped = len(self._pending) - MAX_PENDING
            if dropped > 0:
                del self._pending[:dropped]
                metrics.limiter_releases_dropped.inc(dropped)
            if self._pending:
                self._ready.notify()

    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> bool:
        """Send everything queued now, and wait for a send of the flusher's in progress
        (tests, process exit); False if something stays queued."""
        with self._sending:
            taken = self.take()
            if not taken or self._deliver(taken):
                return True
            self.give_back(taken)
            return False

    def clear(self) -> None:
        with self._ready:
            self._pending.clear()

    def _deliver(self, releases: list[PendingRelease]) -> bool:
        try:
            return self._send(releases)
        except Exception:
            # The flusher must outlive any bug in a send.
            logger.exception("rate limiter: releases could not be sent")
            return False

    def _run(self) -> None:
        lingered = False
        while True:
            with self._ready:
                if not self._pending:
                    if lingered:
                        self._flusher_wakes_at = math.inf  # until a release wakes it
                        self._ready.wait()
                        lingered = False
                    else:
                        # A stream of requests takes and queues releases all the time:
                        # look again one delay later before sleeping until woken.
                        self._flusher_wakes_at = time.monotonic() + release_delay_seconds()
                        self._ready.wait(release_delay_seconds())
                        lingered = True
                    continue
                lingered = False
                due = max(self._pending[0].queued_at + release_delay_seconds(), self._hold_until)
                self._flusher_wakes_at = due
                wait = due - time.monotonic()
                if wait > 0:
                    # An admission may take them meanwhile, and newer ones are queued
                    # unannounced: look again at the due time.
                    self._ready.wait(wait)
                    continue
            with self._sending:
                taken = self.take()
                if taken and not self._deliver(taken):
                    self.give_back(taken)
                    with self._ready:
                        self._hold_until = time.monotonic() + settings.LIMITS_REDIS_RETRY_SECONDS
