"""psycopg's connection, able to send a statement in the same message as the BEGIN.

psycopg begins a transaction lazily: before the first statement after a commit or a
rollback (autocommit off), the cursor calls `Connection._start_query()`, which sends
`_get_tx_start_command()` (BEGIN) as a message of its own and waits for its answer, then
sends the statement (psycopg 3.3, psycopg/_connection_base.py). The backend's transaction
path (`SET LOCAL search_path`) would then be a third message and a second wait.

`begin_with()` queues one statement for the next BEGIN: both go as one simple-query
message (`BEGIN; SET LOCAL ...`), one round trip, which PgBouncer in transaction mode
forwards whole to the server connection the transaction gets. `_start_query()` is the
one method overridden; psycopg's own `_exec_command()` accepts a single result only, so
the message is sent and its two results checked here.
"""

from typing import Any

import psycopg
from psycopg import errors, generators, pq
from psycopg.abc import PQGen

_IDLE = pq.TransactionStatus.IDLE
_COMMAND_OK = pq.ExecStatus.COMMAND_OK
_FATAL_ERROR = pq.ExecStatus.FATAL_ERROR


class BeginWithConnection(psycopg.Connection[Any]):
    # The statement the next BEGIN carries, and whether the last BEGIN carried it.
    _with_begin: bytes | None = None
    _sent_with_begin = False

    def begin_with(self, statement: str) -> None:
        """Send `statement` with the BEGIN of the next transaction, if the next statement
        begins one; `begin_with_sent()` then tells whether it did."""
        self._with_begin = statement.encode(self.pgconn._encoding)
        self._sent_with_begin = False

    def begin_with_sent(self) -> bool:
        """Whether the queued statement went with a BEGIN; forgets it either way."""
        sent = self._sent_with_begin
        self._with_begin, self._sent_with_begin = None, False
        return sent

    def _start_query(self) -> PQGen[None]:
        statement, self._with_begin = self._with_begin, None
        if (
            statement is None
            or self._autocommit
            or self._pipeline is not None
            or self.pgconn.transaction_status != _IDLE
        ):
            yield from super()._start_query()
            return
        self._check_connection_ok()
        self.pgconn.send_query(self._get_tx_start_command() + b"; " + statement)
        results = yield from generators.execute(self.pgconn)
        self._sent_with_begin = True
        for result in results:
            if result.status == _FATAL_ERROR:
                raise errors.error_from_result(result, encoding=self.pgconn._encoding)
            if result.status != _COMMAND_OK:
                status = pq.ExecStatus(result.status).name
                raise errors.InterfaceError(f"unexpected result {status} from the BEGIN")
