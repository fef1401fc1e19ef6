"""The platform's gunicorn worker: gunicorn's threaded worker, reading the next request
of a connection the platform asked to slow down (fhirplatform/slowdown.py) only once the
delay has passed. Configured in fhirplatform/gunicorn_conf.py.

A slowed connection is held by the worker's event loop, not by a thread: it is handed
back to gunicorn (kept alive, or closed) when its time comes, or at once when the worker
stops.
"""

import heapq
import itertools
import time
from concurrent.futures import Future
from typing import Any

from gunicorn.workers import gthread

from fhirplatform.slowdown import connection_delay_take, slowdown_enable


class ThreadWorker(gthread.ThreadWorker):
    def init_process(self) -> None:
        self._held: list[tuple[float, int, Any, Future[Any]]] = []
        self._order = itertools.count()
        slowdown_enable()
        super().init_process()

    def finish_request(self, conn: Any, fs: Future[Any]) -> None:
        delay = connection_delay_take(conn.sock)
        if delay > 0 and self.alive and not fs.cancelled() and fs.exception() is None:
            heapq.heappush(self._held, (time.monotonic() + delay, next(self._order), conn, fs))
            return
        super().finish_request(conn, fs)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        if self._held:
            timeout = max(0.0, min(timeout, self._held[0][0] - time.monotonic()))
        super().wait_for_and_dispatch_events(timeout)
        now = time.monotonic()
        while self._held and (self._held[0][0] <= now or not self.alive):
            _, _, conn, fs = heapq.heappop(self._held)
            super().finish_request(conn, fs)
