"""One unit of work as one transaction, re-run when PostgreSQL aborts it for a conflict.

Two transactions that lock the same rows in opposite orders deadlock, and PostgreSQL
aborts one of them (40P01); under stricter isolation a transaction may also be aborted
as a serialization failure (40001). Neither says anything about the request: the
victim's work was rolled back whole, so it is run again, a bounded number of times
with a short jittered pause (the winner needs a moment to commit), and past that the
fault is answered 503 with Retry-After (fhirplatform/db/faults.py).
"""

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, OperationalError, connections, transaction

from fhirplatform.db.faults import transaction_conflict

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Pause before re-run n: up to BACKOFF_SECONDS * 2**(n-1), so 0-50 ms, then 0-100 ms, ...
BACKOFF_SECONDS = 0.05


def transaction_run(*, work: Callable[[], T], using: str = DEFAULT_DB_ALIAS) -> T:
    """Run `work` in one transaction, re-running it after a deadlock or serialization failure.

    `work` must be safe to run again: everything it wrote is rolled back before a re-run
    and its `transaction.on_commit` callbacks are dropped, but anything it changed
    outside the database is not undone. Inside an enclosing transaction there is no
    re-run (the enclosing one still holds its locks): the conflict is raised at once.
    """
    attempts = 1 if connections[using].in_atomic_block else settings.DATABASE_TRANSACTION_ATTEMPTS
    for attempt in range(1, attempts + 1):
        try:
            with transaction.atomic(using=using):
                return work()
        except OperationalError as error:
            if attempt == attempts or not transaction_conflict(error):
                raise
            logger.warning(
                "transaction conflict, running it again",
                extra={"sqlstate": getattr(error.__cause__, "sqlstate", None), "attempt": attempt},
            )
            time.sleep(random.uniform(0, BACKOFF_SECONDS * 2 ** (attempt - 1)))
    raise AssertionError("unreachable: the last attempt returns or raises")
