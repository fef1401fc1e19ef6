"""Counting TCP proxies: what an application sends to PostgreSQL and Redis, counted on the
wire rather than estimated from the code.

Each proxy listens on a free loopback port, forwards every byte unchanged both ways and
parses what the client sends:

- PostgresCounter: the frontend protocol. Statements are each Execute ('E') plus the
  statements inside each simple Query ('Q'; "BEGIN; SET LOCAL search_path = t" is two).
  Round trips are each 'Q' and each Sync ('S'): either ends in the one ReadyForQuery the
  client waits for. The client must connect with sslmode=disable (TLS cannot be parsed;
  such a connection is forwarded and counted as opaque).
- RedisCounter: RESP requests (arrays of bulk strings) and inline commands, by name.

    with PostgresCounter.for_url(database_url) as pg:
        before = pg.snapshot()
        ...  # connect to pg.url_for(database_url)
        print(pg.delta(before).statements)

snapshot(), reset() and delta() are thread-safe; a count is updated before the bytes it
came from are forwarded, so once the client has its answer the count includes its request.
"""

import contextlib
import socket
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

from scripts.wire_protocols import PostgresStream, ProtocolError, RedisStream, Tally

# Statement or command texts kept for diagnostics, per proxy; later ones are dropped.
MAX_TEXTS = 10_000
_RECV_BYTES = 65536


def _counter_minus(after: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    names = set(after) | set(before)
    difference = {name: after.get(name, 0) - before.get(name, 0) for name in names}
    return {name: count for name, count in sorted(difference.items()) if count}


@dataclass(frozen=True)
class PostgresCounts:
    statements: int = 0
    round_trips: int = 0
    connections: int = 0
    # Frontend messages by type letter ('Q', 'P', 'B', 'E', 'S', 'X', ...).
    messages: Mapping[str, int] = field(default_factory=dict)
    # Connections forwarded without counting (TLS, or bytes that did not parse).
    opaque_connections: int = 0
    texts: tuple[str, ...] = ()

    def __sub__(self, before: "PostgresCounts") -> "PostgresCounts":
        return PostgresCounts(
            statements=self.statements - before.statements,
            round_trips=self.round_trips - before.round_trips,
            connections=self.connections - before.connections,
            messages=_counter_minus(self.messages, before.messages),
            opaque_connections=self.opaque_connections - before.opaque_connections,
            texts=self.texts[len(before.texts) :],
        )


@dataclass(frozen=True)
class RedisCounts:
    commands: int = 0
    # Sends separated by a reply: a pipeline is one, a command sent after the previous
    # one's reply arrived is another (whether or not the client read that reply first).
    round_trips: int = 0
    connections: int = 0
    by_name: Mapping[str, int] = field(default_factory=dict)
    opaque_connections: int = 0
    texts: tuple[str, ...] = ()

    def __sub__(self, before: "RedisCounts") -> "RedisCounts":
        return RedisCounts(
            commands=self.commands - before.commands,
            round_trips=self.round_trips - before.round_trips,
            connections=self.connections - before.connections,
            by_name=_counter_minus(self.by_name, before.by_name),
            opaque_connections=self.opaque_connections - before.opaque_connections,
            texts=self.texts[len(before.texts) :],
        )


class _Connection:
    def __init__(self, client: socket.socket, upstream: socket.socket, stream: object) -> None:
        self.client = client
        self.upstream = upstream
        self.stream = stream
        self.opaque = False
        self.replied = True  # the server has answered since the client last sent a command

    def shut(self) -> None:
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):  # already closed by the other side
                sock.shutdown(socket.SHUT_RDWR)


class _CountingProxy:
    """A thread-per-direction TCP proxy on a free loopback port."""

    _name = "proxy"

    def __init__(self, upstream_host: str, upstream_port: int, *, keep_texts: bool = True):
        self.upstream = (upstream_host, upstream_port)
        self.keep_texts = keep_texts
        self._lock = threading.Lock()
        self._connections: set[_Connection] = set()
        self._threads: list[threading.Thread] = []
        self._closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)  # accept() wakes up to notice close()
        self.port: int = self._listener.getsockname()[1]
        self._reset_totals()
        self._accepting = threading.Thread(
            target=self._accept_loop, name=f"{self._name}-accept", daemon=True
        )
        self._accepting.start()

    # Totals, guarded by _lock.
    def _reset_totals(self) -> None:
        self._statements = 0
        self._round_trips = 0
        self._accepted = 0
        self._opaque = 0
        self._messages: Counter[str] = Counter()
        self._commands: Counter[str] = Counter()
        self._texts: list[str] = []

    def reset(self) -> None:
        with self._lock:
            self._reset_totals()

    def _apply(self, tally: Tally) -> None:
        with self._lock:
            self._statements += tally.statements
            self._round_trips += tally.round_trips
            self._messages.update(tally.messages)
            self._commands.update(tally.commands)
            if self.keep_texts:
                room = MAX_TEXTS - len(self._texts)
                self._texts.extend(tally.texts[: max(room, 0)])

    def _new_stream(self) -> object:
        raise NotImplementedError

    def _client_bytes(self, connection: _Connection, data: bytes) -> None:
        raise NotImplementedError

    def _server_bytes(self, connection: _Connection, data: bytes) -> None:
        connection.replied = True

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listener was closed
            client.settimeout(None)
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = _Connection(client, upstream, self._new_stream())
            with self._lock:
                self._accepted += 1
                self._connections.add(connection)
                self._threads = [thread for thread in self._threads if thread.is_alive()]
                for target, direction in ((self._pump_client, "up"), (self._pump_server, "down")):
                    thread = threading.Thread(
                        target=target,
                        args=(connection,),
                        name=f"{self._name}-{direction}",
                        daemon=True,
                    )
                    self._threads.append(thread)
                    thread.start()

    def _pump_client(self, connection: _Connection) -> None:
        try:
            while data := connection.client.recv(_RECV_BYTES):
                if not connection.opaque:
                    try:
                        self._client_bytes(connection, data)
                    except (ProtocolError, ValueError):
                        self._go_opaque(connection)
                connection.upstream.sendall(data)
        except OSError:
            pass
        finally:
            self._end(connection)

    def _pump_server(self, connection: _Connection) -> None:
        try:
            while data := connection.upstream.recv(_RECV_BYTES):
                # Seen before forwarding: the client cannot send again before it has it.
                self._server_bytes(connection, data)
                connection.client.sendall(data)
        except OSError:
            pass
        finally:
            self._end(connection)

    def _go_opaque(self, connection: _Connection) -> None:
        connection.opaque = True
        with self._lock:
            self._opaque += 1

    def _end(self, connection: _Connection) -> None:
        connection.shut()
        with self._lock:
            if connection not in self._connections:
                return
            self._connections.discard(connection)
        connection.client.close()
        connection.upstream.close()

    def close(self) -> None:
        """Stop accepting and cut every connection through the proxy."""
        self._closed.set()
        self._listener.close()
        self._accepting.join(timeout=5)
        with self._lock:
            connections, threads = list(self._connections), list(self._threads)
        for connection in connections:
            connection.shut()
        for thread in threads:
            thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _url_through(url: str, port: int, query: Iterable[tuple[str, str]] = ()) -> str:
    """`url` with its host and port replaced by the proxy's, user, path and query kept."""
    parsed = urlparse(url)
    user = parsed.netloc.rpartition("@")[0]
    netloc = f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}"
    params = dict(parse_qsl(parsed.query)) | dict(query)
    return urlunparse(parsed._replace(netloc=netloc, query=urlencode(params)))


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parsed = urlparse(url)
    return parsed.hostname or "127.0.0.1", parsed.port or default_port


class PostgresCounter(_CountingProxy):
    """Counts statements and round trips on the connections made through it."""

    _name = "pg-count"

    @classmethod
    def for_url(cls, database_url: str, *, keep_texts: bool = True) -> "PostgresCounter":
        """A proxy in front of the server DATABASE_URL names (TCP only)."""
        return cls(*_host_port(database_url, 5432), keep_texts=keep_texts)

    def url_for(self, database_url: str) -> str:
        """DATABASE_URL through this proxy, without TLS so that the protocol can be read."""
        return _url_through(database_url, self.port, [("sslmode", "disable")])

    def _new_stream(self) -> PostgresStream:
        return PostgresStream()

    def _client_bytes(self, connection: _Connection, data: bytes) -> None:
        stream = connection.stream
        assert isinstance(stream, PostgresStream)
        tally = Tally()
        try:
            stream.feed(data, tally)
        finally:
            self._apply(tally)

    def _server_bytes(self, connection: _Connection, data: bytes) -> None:
        stream = connection.stream
        assert isinstance(stream, PostgresStream)
        if stream.awaiting_encryption_answer and data and not stream.server_answered(data[0]):
            self._go_opaque(connection)

    def snapshot(self) -> PostgresCounts:
        with self._lock:
            return PostgresCounts(
                statements=self._statements,
                round_trips=self._round_trips,
                connections=self._accepted,
                messages=dict(sorted(self._messages.items())),
                opaque_connections=self._opaque,
                texts=tuple(self._texts),
            )

    def delta(self, before: PostgresCounts) -> PostgresCounts:
        return self.snapshot() - before


class RedisCounter(_CountingProxy):
    """Counts commands, by name, on the connections made through it."""

    _name = "redis-count"

    @classmethod
    def for_url(cls, redis_url: str, *, keep_texts: bool = True) -> "RedisCounter":
        """A proxy in front of the server REDIS_URL names (redis://, TCP only)."""
        return cls(*_host_port(redis_url, 6379), keep_texts=keep_texts)

    def url_for(self, redis_url: str) -> str:
        """REDIS_URL (same database and credentials) through this proxy."""
        return _url_through(redis_url, self.port)

    def _new_stream(self) -> RedisStream:
        return RedisStream()

    def _client_bytes(self, connection: _Connection, data: bytes) -> None:
        stream = connection.stream
        assert isinstance(stream, RedisStream)
        tally = Tally()
        try:
            stream.feed(data, tally)
        finally:
            if tally.commands and connection.replied:
                tally.round_trips, connection.replied = 1, False
            self._apply(tally)

    def snapshot(self) -> RedisCounts:
        with self._lock:
            return RedisCounts(
                commands=sum(self._commands.values()),
                round_trips=self._round_trips,
                connections=self._accepted,
                by_name=dict(sorted(self._commands.items())),
                opaque_connections=self._opaque,
                texts=tuple(self._texts),
            )

    def delta(self, before: RedisCounts) -> RedisCounts:
        return self.snapshot() - before
