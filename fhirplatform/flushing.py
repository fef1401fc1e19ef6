"""A process's buffer that a background thread writes out: every few seconds while the
process runs, and once more when it exits.

Used where a request must not wait for a write that may come a moment later (throttle
events counted per second, the refusal gate's audit events). The thread is started by
the buffer's first entry, so a process that forks (gunicorn) starts its own.
"""

import atexit
import logging
import threading
import time
from collections.abc import Callable

from django.db import close_old_connections

logger = logging.getLogger(__name__)


class BackgroundFlusher:
    def __init__(
        self, flush: Callable[[], object], *, name: str, every: Callable[[], float], what: str
    ) -> None:
        """`flush` writes the buffer; `every` gives the seconds between runs (read each
        time, so settings apply); `what` names the buffer in the log when a run fails."""
        self._flush = flush
        self._name = name
        self._every = every
        self._what = what
        self._thread: threading.Thread | None = None
        atexit.register(self._at_exit)

    def start(self) -> None:
        """Start the thread unless it runs (the caller holds its buffer's lock)."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self._every())
            try:
                self._flush()
            except Exception:
                logger.exception("%s could not be written", self._what)
            finally:
                close_old_connections()

    def _at_exit(self) -> None:
        try:
            self._flush()
        except Exception:
            logger.exception("%s lost at exit", self._what)
