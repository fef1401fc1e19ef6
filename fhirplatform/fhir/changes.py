"""What the FHIR store's writes changed, told to the caches once the writes commit.

Every write path of fhirplatform/fhir/services.py records the patients whose compartment
the write touched (before and after it) and the resource type. Within one database
transaction the records add up, and ONE `transaction.on_commit` callback hands the sum to
`fhirplatform.cache.generations.generations_changed`, per tenant schema: a Bundle or a
loader chunk of a thousand resources bumps each generation once, not a thousand times.
A rolled-back transaction tells nothing (Django drops its callback); outside a
transaction (autocommit) the write has committed already, and it is told at once.

The callback is a plain on_commit, not a robust one: a cache that was not told about a
committed write would serve stale or wrongly permitted data, so a failure to tell it
surfaces to the writer instead of going to a log.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from django.db import DEFAULT_DB_ALIAS, connections, transaction

from fhirplatform.schemas import schema_current

CONSENT = "Consent"
# The connection attribute holding the transaction's pending changes. It lives on the
# connection because a transaction, its savepoints and its on_commit callbacks do.
_PENDING = "_fhirplatform_resource_changes"


@dataclass(frozen=True)
class ResourceChanges:
    """What the writes of one transaction changed in one tenant schema."""

    tenant_schema: str
    patients: frozenset[str]
    resource_types: frozenset[str]
    consent: bool


@dataclass
class _Accumulated:
    patients: set[str] = field(default_factory=set)
    resource_types: set[str] = field(default_factory=set)

    def add(self, *, resource_type: str, patients: Iterable[str]) -> None:
        self.resource_types.add(resource_type)
        self.patients.update(patients)

    def frozen(self, tenant_schema: str) -> ResourceChanges:
        return ResourceChanges(
            tenant_schema=tenant_schema,
            patients=frozenset(self.patients),
            resource_types=frozenset(self.resource_types),
            consent=CONSENT in self.resource_types,
        )


@dataclass
class _Pending:
    """One transaction's changes by schema, and the one callback that will tell them."""

    by_schema: dict[str, _Accumulated] = field(default_factory=dict)
    callback: Callable[[], None] | None = None


def _tell(changes: ResourceChanges) -> None:
    # Imported here: the cache layer imports the FHIR app, not the other way round.
    from fhirplatform.cache.generations import generations_changed

    generations_changed(
        tenant_schema=changes.tenant_schema,
        patients=changes.patients,
        resource_types=changes.resource_types,
        consent=changes.consent,
    )


def _registered(alias: str, pending: _Pending | None) -> bool:
    """Whether `pending`'s callback is still to run at this transaction's commit.

    Django drops the callbacks registered inside a savepoint that is rolled back, and all
    of them when the transaction is: a pending set whose callback is gone holds only
    rolled-back writes, and the next write starts a new one. (The records of a savepoint
    rolled back under a callback registered before it are still told: telling a cache
    too much costs it a refill, telling it too little would serve what changed.)
    """
    if pending is None or pending.callback is None:
        return False
    # Entries are (savepoint ids, callback, robust); the stubs know only the first two.
    return any(entry[1] is pending.callback for entry in connections[alias].run_on_commit)


def _pending_for_transaction(alias: str) -> _Pending:
    connection = connections[alias]
    current: _Pending | None = getattr(connection, _PENDING, None)
    if current is not None and _registered(alias, current):
        return current
    pending = _Pending()

    def tell_committed() -> None:
        # Detach first: a write made by a callback after this commit is a new transaction's.
        if getattr(connection, _PENDING, None) is pending:
            setattr(connection, _PENDING, None)
        for schema, accumulated in pending.by_schema.items():
            _tell(accumulated.frozen(schema))

    pending.callback = tell_committed
    setattr(connection, _PENDING, pending)
    transaction.on_commit(tell_committed, using=alias)
    return pending


def resource_changes_record(*, resource_type: str, patients: Iterable[str]) -> None:
    """Record that a write of `resource_type` touched these patients' compartments (the
    union of the compartment before and after the write), in the current tenant schema.

    Told to the caches when the surrounding transaction commits, with everything else the
    transaction wrote; at once when there is no transaction.
    """
    alias = DEFAULT_DB_ALIAS
    schema = schema_current()
    if not connections[alias].in_atomic_block:
        accumulated = _Accumulated()
        accumulated.add(resource_type=resource_type, patients=patients)
        _tell(accumulated.frozen(schema))
        return
    pending = _pending_for_transaction(alias)
    accumulated = pending.by_schema.setdefault(schema, _Accumulated())
    accumulated.add(resource_type=resource_type, patients=patients)


def resource_changes_pending() -> list[ResourceChanges]:
    """What the current transaction has recorded so far and will tell at its commit, by
    schema ([] outside a transaction or before its first write)."""
    alias = DEFAULT_DB_ALIAS
    pending: _Pending | None = getattr(connections[alias], _PENDING, None)
    if not connections[alias].in_atomic_block or not _registered(alias, pending):
        return []
    assert pending is not None
    return [accumulated.frozen(schema) for schema, accumulated in pending.by_schema.items()]
