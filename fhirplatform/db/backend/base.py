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
  fhirplatform/schemas.py), the `SET LOCAL search_path` goes in the same message as the
  transaction's BEGIN (connection.py): the schema costs no round trip of its own. A
  later statement that needs another path than the transaction has (a schema switch
  inside the transaction, or the path a rolled-back savepoint took with it) is preceded
  by a `SET LOCAL` of its own;
- outside one (autocommit), a statement for the public schema runs as it is: nothing ever
  changes the session's path, so it is the database's default, which resolves `public`.
  A statement for a tenant schema is never left to whatever path the server connection
  has (fail closed): it runs in a transaction of its own, begun with the SET LOCAL.
  Migrations and one-off scripts take this path;
- a statement that names the schema of every table it touches needs no path at all. It
  runs as it is, in autocommit or in a transaction, but only on a cursor taken from
  `schema_named_cursor()`: nothing else skips the path (the single-statement read does,
  and so must a statement that cannot run in a transaction, VACUUM or CREATE INDEX
  CONCURRENTLY).
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.db import transaction
from django.db.backends.utils import CursorWrapper
from django_tenants.postgresql_backend import base as tenant_backend
from django_tenants.utils import get_public_schema_name, quote_schema_name
from psycopg.pq import TransactionStatus

from fhirplatform.db.backend.connection import BeginWithConnection
from fhirplatform.db.backend.driver import BeginWithDriver

# The path after ROLLBACK TO SAVEPOINT: whatever it was when the savepoint was taken.
_UNKNOWN_PATH = ("",)
# Statements that name no table: they need no path, and setting one would cost a round trip.
_PATHLESS = ("SAVEPOINT ", "RELEASE SAVEPOINT ", "ROLLBACK TO SAVEPOINT ")


class DatabaseWrapper(tenant_backend.DatabaseWrapper):
    # psycopg, whose connections send the SET LOCAL with the BEGIN (driver.py).
    Database = BeginWithDriver()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The path SET LOCAL in the open transaction; None: the session's default.
        self._local_path: tuple[str, ...] | None = None
        self._setting_local_path = False
        # The cursor of the open schema_named_cursor() block, if any.
        self._schema_named_cursor: CursorWrapper | None = None
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

    @contextmanager
    def schema_named_cursor(self) -> Iterator[CursorWrapper]:
        """A cursor whose statements run with no search_path set for them: each must name
        the schema of every table it touches (django_tenants.utils.quote_schema_name)."""
        with self.cursor() as cursor:
            outer, self._schema_named_cursor = self._schema_named_cursor, cursor
            try:
                yield cursor
            finally:
                self._schema_named_cursor = outer

    def _search_path_guard(
        self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        if self._setting_local_path:
            return execute(sql, params, many, context)
        autocommit = self.get_autocommit()
        begins = (
            not autocommit and self.connection.info.transaction_status == TransactionStatus.IDLE
        )
        if begins:
            # No transaction is open: this statement begins one, with the session's path.
            self._local_path = None
        schema_named = context["cursor"] is self._schema_named_cursor
        wanted = tuple(self._get_cursor_search_paths())
        session_default = (get_public_schema_name(),)
        if autocommit:
            if schema_named or wanted == session_default:
                return execute(sql, params, many, context)
            with transaction.atomic(using=self.alias):
                return self._search_path_guard(execute, sql, params, many, context)
        if begins and wanted != session_default:
            # Whatever the statement, the path rides on the BEGIN for free.
            return self._execute_begun_with_path(wanted, execute, sql, params, many, context)
        if (
            schema_named
            or (isinstance(sql, str) and sql.startswith(_PATHLESS))
            or wanted == (self._local_path or session_default)
        ):
            return execute(sql, params, many, context)
        self._search_path_set_local(wanted)
        return execute(sql, params, many, context)

    def _execute_begun_with_path(
        self,
        path: tuple[str, ...],
        execute: Callable[..., Any],
        sql: str,
        params: Any,
        many: bool,
        context: Any,
    ) -> Any:
        raw = self.connection
        if not isinstance(raw, BeginWithConnection):  # a connection psycopg's pool made
            self._search_path_set_local(path)
            return execute(sql, params, many, context)
        statement = _set_local(path)
        if self.queries_logged:
            # Listed like Django lists the BEGIN it does not send itself: query counts and
            # logs show the SET LOCAL as the statement it is.
            self.queries_log.append({"sql": statement, "time": "0.000"})
        raw.begin_with(statement)
        try:
            return execute(sql, params, many, context)
        finally:
            if raw.begin_with_sent():
                self._local_path = path

    def _search_path_set_local(self, path: tuple[str, ...]) -> None:
        self._setting_local_path = True
        try:
            # Through a Django cursor, so query counts and logs show it like any statement.
            with self.cursor() as cursor:
                cursor.execute(_set_local(path))
        finally:
            self._setting_local_path = False
        self._local_path = path


def _set_local(path: tuple[str, ...]) -> str:
    return f"SET LOCAL search_path = {','.join(quote_schema_name(schema) for schema in path)}"
