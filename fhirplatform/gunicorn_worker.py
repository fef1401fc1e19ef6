"""The platform's gunicorn worker: gunicorn's threaded worker, which takes a new
connection only with a thread free to serve it, and reads the next request of a connection
the platform asked to slow down (fhirplatform/slowdown.py) only once the delay has passed.
Configured in fhirplatform/gunicorn_conf.py.

gunicorn's worker accepts every connection it is woken for and queues it behind its busy
threads, so the connections opened together (a client's pool, a burst) may all land on one
worker, queued, while another worker idles, and the busy one spends more CPU per request
on its threads' contention. Here a worker whose every thread is busy leaves new connections
to the others (or in the listen backlog until a thread is free).

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
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Connections handed to a thread and not yet back; counted on the event loop's
        # thread (it hands them over and takes them back), so without a lock.
        self._in_threads = 0
        super().__init__(*args, **kwargs)

    def init_process(self) -> None:
        self._held: list[tuple[float, int, Any, Future[Any]]] = []
        self._order = itertools.count()
        slowdown_enable()
        super().init_process()

    # gunicorn's event loop accepts while it holds fewer connections than
    # `worker_connections` and reads the attribute on every turn: none while every
    # thread is busy.
    @property  # type: ignore[override]
    def worker_connections(self) -> int:
        return 0 if self._in_threads >= self.cfg.threads else self._connections_cap

    @worker_connections.setter
    def worker_connections(self, value: int) -> None:
        self._connections_cap = value

    def enqueue_req(self, conn: Any) -> None:
        self._in_threads += 1
        super().enqueue_req(conn)

    def finish_request(self, conn: Any, fs: Future[Any]) -> None:
        self._in_threads -= 1
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
