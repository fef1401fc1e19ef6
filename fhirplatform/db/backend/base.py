"""django-tenants' PostgreSQL backend, with the search_path set per transaction.

django-tenants moves a connection between schemas with a session-level `SET search_path`
before a statement. Behind a pooler in transaction mode (PgBouncer `pool_mode =
transaction`) the statement may run on another server connection than that SET did, and
the SET stays on its server connection for whichever client gets it next: one tenant's
transaction reads another tenant's tables.

Here the session's search_path is never changed. The schema is set with `SET LOCAL`,
which PostgreSQL undoes when the transaction ends, inside the transaction of the
statement that needs it:

- in a transaction (the way request, task and command code runs tenant work, see
  fhirplatform/schemas.py), one `SET LOCAL search_path` precedes the first statement that
  needs a path other than the one this transaction already has;
- outside one (autocommit), a statement for the public schema runs as it is: nothing ever
  changes the session's path, so it is the database's default, which resolves `public`.
  A statement for a tenant schema is never left to whatever path the server connection
  has (fail closed): it runs in a transaction of its own, after the SET LOCAL. Migrations
  and one-off scripts take this path. (A statement that cannot run in a transaction,
  VACUUM or CREATE INDEX CONCURRENTLY, has to name its schema instead.)
"""

from collections.abc import Callable
from typing import Any

from django.db import transaction
from django_tenants.postgresql_backend import base as tenant_backend
from django_tenants.utils import get_public_schema_name, quote_schema_name
from psycopg.pq import TransactionStatus

# The path after ROLLBACK TO SAVEPOINT: whatever it was when the savepoint was taken.
_UNKNOWN_PATH = ("",)
# Statements that name no table: they need no path, and setting one would cost a round trip.
_PATHLESS = ("SAVEPOINT ", "RELEASE SAVEPOINT ", "ROLLBACK TO SAVEPOINT ")


class DatabaseWrapper(tenant_backend.DatabaseWrapper):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The path SET LOCAL in the open transaction; None: the session's default.
        self._local_path: tuple[str, ...] | None = None
        self._setting_local_path = False
        super().__init__(*args, **kwargs)
        # First in the list, so outermost: it runs before every statement on this
        # connection, including those of the debug cursor that tests count with.
        self.execute_wrappers.insert(0, self._search_path_guard)

    def _handle_search_path(self, cursor: Any = None) -> None:
        """django-tenants' session-level SET, replaced by _search_path_guard."""

    def close(self) -> None:
        self._local_path = None
        super().close()

    def _commit(self) -> None:
        self._local_path = None
        super()._commit()

    def _rollback(self) -> None:
        self._local_path = None
        super()._rollback()

    def savepoint_rollback(self, sid: str) -> None:
        try:
            super().savepoint_rollback(sid)
        finally:
            # A SET LOCAL issued after the savepoint is undone with it.
            self._local_path = _UNKNOWN_PATH

    def _search_path_guard(
        self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        if self._setting_local_path:
            return execute(sql, params, many, context)
        autocommit = self.get_autocommit()
        if not autocommit and self.connection.info.transaction_status == TransactionStatus.IDLE:
            # No transaction is open: this statement begins one, with the session's path.
            self._local_path = None
        if isinstance(sql, str) and sql.startswith(_PATHLESS):
            return execute(sql, params, many, context)
        wanted = tuple(self._get_cursor_search_paths())
        session_default = (get_public_schema_name(),)
        if autocommit:
            if wanted == session_default:
                return execute(sql, params, many, context)
            with transaction.atomic(using=self.alias):
                return self._search_path_guard(execute, sql, params, many, context)
        if wanted != (self._local_path or session_default):
            self._search_path_set_local(wanted)
        return execute(sql, params, many, context)

    def _search_path_set_local(self, path: tuple[str, ...]) -> None:
        self._setting_local_path = True
        try:
            # Through a Django cursor, so query counts and logs show it like any statement.
            with self.cursor() as cursor:
                quoted = ",".join(quote_schema_name(schema) for schema in path)
                cursor.execute(f"SET LOCAL search_path = {quoted}")
        finally:
            self._setting_local_path = False
        self._local_path = path
