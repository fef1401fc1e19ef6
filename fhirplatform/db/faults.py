"""What a database fault is answered with: never a 500 for a fault of the database itself.

A refused or lost connection (PostgreSQL or the pooler down, restarting, out of
connections) is 503 `transient` with Retry-After, like a transaction PostgreSQL kept
aborting as a deadlock victim or serialization failure after its retries
(fhirplatform/db/transactions.py). A conflict changed nothing; an outage almost never
did (only a connection lost while committing leaves a write's outcome unknown, which is
what conditional requests are for). Either way the client may send the request again.
Anything else stays an internal error.
"""

from enum import StrEnum

import psycopg
from django import db

from fhirplatform.errors import FhirError, IssueCode


class DatabaseFaultReason(StrEnum):
    """issue.details.coding of the 503, telling the two faults apart."""

    UNAVAILABLE = "database-unavailable"
    CONFLICT = "transaction-conflict"


# Seconds a client is asked to wait: a restart or failover takes seconds; a lost
# deadlock is over as soon as the other transaction commits.
RETRY_AFTER_UNAVAILABLE = 5
RETRY_AFTER_CONFLICT = 1

# SQLSTATEs of a transaction aborted only because of a concurrent one: re-running it is safe.
_CONFLICT_STATES = {"40001", "40P01"}  # serialization_failure, deadlock_detected
# Connection exception, insufficient resources (too many connections, out of memory or
# disk), and a server shutting down, crashed, or not accepting connections yet.
_UNAVAILABLE_PREFIXES = ("08", "53", "57P01", "57P02", "57P03")


def _sqlstate(error: BaseException) -> str | None:
    # Django re-raises the driver's error as its own, with the driver's as the cause.
    cause = error.__cause__ if isinstance(error, db.Error) else error
    return getattr(cause, "sqlstate", None)


def transaction_conflict(error: BaseException) -> bool:
    """The transaction lost to a concurrent one (deadlock, serialization failure)."""
    return (
        isinstance(error, db.OperationalError | psycopg.OperationalError)
        and _sqlstate(error) in _CONFLICT_STATES
    )


def database_unavailable(error: BaseException) -> bool:
    """The database could not be reached, or dropped the connection, or refused work."""
    if isinstance(error, db.InterfaceError | psycopg.InterfaceError):
        return True
    if not isinstance(error, db.OperationalError | psycopg.OperationalError):
        return False
    state = _sqlstate(error)
    # No SQLSTATE: the driver failed to connect or lost the socket before any answer.
    return state is None or state.startswith(_UNAVAILABLE_PREFIXES)


def database_fault(error: BaseException) -> FhirError | None:
    """The 503 a database fault is answered with, or None for any other error."""
    if transaction_conflict(error):
        return FhirError(
            503,
            IssueCode.TRANSIENT,
            "The request conflicted with concurrent transactions and was not applied; "
            "send it again",
            reason=DatabaseFaultReason.CONFLICT,
            headers={"Retry-After": str(RETRY_AFTER_CONFLICT)},
        )
    if database_unavailable(error):
        return FhirError(
            503,
            IssueCode.TRANSIENT,
            "The database is temporarily unavailable; retry later",
            reason=DatabaseFaultReason.UNAVAILABLE,
            headers={"Retry-After": str(RETRY_AFTER_UNAVAILABLE)},
        )
    return None
