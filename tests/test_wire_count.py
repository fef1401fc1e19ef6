"""The counting proxies of scripts/wire_count.py, against the real PostgreSQL and Redis of
DATABASE_URL and REDIS_URL: what psycopg and redis-py send through them is counted exactly,
and what comes back is unchanged."""

import os
import socket
import threading
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import redis

from scripts.wire_count import PostgresCounter, RedisCounter
from scripts.wire_protocols import PostgresStream, Tally, sql_statements

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def postgres() -> Iterator[PostgresCounter]:
    with PostgresCounter.for_url(DATABASE_URL) as counter:
        yield counter


@pytest.fixture
def redis_counter() -> Iterator[RedisCounter]:
    with RedisCounter.for_url(REDIS_URL) as counter:
        yield counter


def test_a_select_with_parameters_is_one_statement_and_one_round_trip(
    postgres: PostgresCounter,
) -> None:
    with psycopg.connect(postgres.url_for(DATABASE_URL), autocommit=True) as conn:
        before = postgres.snapshot()
        row = conn.execute("SELECT %s::int + 1, %s::text", (41, "a;b")).fetchone()
        counted = postgres.delta(before)
    assert row == (42, "a;b")
    assert (counted.statements, counted.round_trips) == (1, 1)
    assert counted.messages == {"B": 1, "D": 1, "E": 1, "P": 1, "S": 1}
    assert counted.texts == ("SELECT $1::int + 1, $2::text",)


def test_a_transaction_counts_begin_select_and_commit(postgres: PostgresCounter) -> None:
    with psycopg.connect(postgres.url_for(DATABASE_URL), autocommit=False) as conn:
        before = postgres.snapshot()
        assert conn.execute("SELECT %s::int", (7,)).fetchone() == (7,)
        conn.commit()
        counted = postgres.delta(before)
    assert (counted.statements, counted.round_trips) == (3, 3)
    assert counted.texts == ("BEGIN", "SELECT $1::int", "COMMIT")


def test_a_simple_query_counts_each_of_its_statements_once(postgres: PostgresCounter) -> None:
    with psycopg.connect(postgres.url_for(DATABASE_URL), autocommit=True) as conn:
        before = postgres.snapshot()
        cursor = conn.execute("SELECT 'x;y'; SELECT $$c;d$$ /* ; */; SELECT 3 -- ;")
        results = [cursor.fetchone()]
        while cursor.nextset():
            results.append(cursor.fetchone())
        counted = postgres.delta(before)
    assert results == [("x;y",), ("c;d",), (3,)]
    assert (counted.statements, counted.round_trips) == (3, 1)
    assert counted.messages == {"Q": 1}


def test_a_transaction_batched_in_one_simple_query_is_one_round_trip(
    postgres: PostgresCounter,
) -> None:
    with psycopg.connect(postgres.url_for(DATABASE_URL), autocommit=True) as conn:
        before = postgres.snapshot()
        conn.execute("BEGIN; SET LOCAL search_path = public; SELECT 1; COMMIT")
        counted = postgres.delta(before)
    assert (counted.statements, counted.round_trips) == (4, 1)


def test_counts_are_exact_across_concurrent_connections_and_reset(
    postgres: PostgresCounter,
) -> None:
    def run() -> None:
        # Never prepared (as the platform connects): psycopg would prepare the 6th run of
        # the same query, a Parse and Sync of its own, one more round trip.
        url = postgres.url_for(DATABASE_URL)
        with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
            for number in range(25):
                assert conn.execute("SELECT %s::int", (number,)).fetchone() == (number,)

    postgres.reset()
    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counted = postgres.snapshot()
    assert (counted.statements, counted.round_trips, counted.connections) == (100, 100, 4)
    assert counted.opaque_connections == 0
    postgres.reset()
    assert postgres.snapshot().statements == 0


def test_close_cuts_open_connections_and_stops_listening(postgres: PostgresCounter) -> None:
    conn = psycopg.connect(postgres.url_for(DATABASE_URL), autocommit=True)
    postgres.close()
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", postgres.port), timeout=2).close()


def test_an_ssl_request_refused_by_the_server_leaves_the_startup_untyped() -> None:
    stream, tally = PostgresStream(), Tally()
    ssl_request = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")
    stream.feed(ssl_request, tally)
    assert stream.server_answered(ord("N"))
    startup = b"\0\3\0\0user\0postgres\0\0"
    stream.feed(len(startup + b"....").to_bytes(4, "big") + startup, tally)
    query = b"SELECT 1; SELECT 2\0"
    stream.feed(b"Q" + (len(query) + 4).to_bytes(4, "big") + query, tally)
    assert (tally.statements, tally.round_trips) == (2, 1)


def test_large_messages_split_across_reads_are_passed_over_not_miscounted() -> None:
    stream, tally = PostgresStream(), Tally()
    stream.untyped_next = False
    copy_data = b"d" + (100_004).to_bytes(4, "big") + b"x" * 100_000
    query = b"SELECT 1\0"
    wire = copy_data + b"Q" + (len(query) + 4).to_bytes(4, "big") + query
    for start in range(0, len(wire), 7_000):  # arbitrary read boundaries
        stream.feed(wire[start : start + 7_000], tally)
    assert tally.messages == {"d": 1, "Q": 1}
    assert tally.statements == 1
    assert len(stream.buffer) == 0


def test_statement_splitting_ignores_semicolons_in_quotes_and_comments() -> None:
    assert sql_statements("SELECT E'x\\';y'; SELECT 'it''s;'") == [
        "SELECT E'x\\';y'",
        "SELECT 'it''s;'",
    ]
    assert sql_statements('SELECT "a;b" FROM t; ;; -- ;\n') == ['SELECT "a;b" FROM t']
    assert sql_statements("SELECT $q$ $$; $q$, $1; SELECT 2") == [
        "SELECT $q$ $$; $q$, $1",
        "SELECT 2",
    ]


def test_a_redis_pipeline_of_three_commands_counts_three(redis_counter: RedisCounter) -> None:
    client = redis.Redis.from_url(redis_counter.url_for(REDIS_URL))
    key = f"wire-count-{uuid.uuid4().hex}"
    try:
        client.ping()  # connected (SELECT, CLIENT SETINFO) before counting
        before = redis_counter.snapshot()
        pipe = client.pipeline(transaction=False)
        pipe.set(key, "1", ex=60)
        pipe.incrby(key, 1)
        pipe.get(key)
        assert pipe.execute() == [True, 2, b"2"]
        counted = redis_counter.delta(before)
    finally:
        client.delete(key)
        client.close()
    assert counted.commands == 3
    assert counted.by_name == {"GET": 1, "INCRBY": 1, "SET": 1}
    assert counted.round_trips == 1


def test_evalsha_counts_one_command(redis_counter: RedisCounter) -> None:
    client = redis.Redis.from_url(redis_counter.url_for(REDIS_URL))
    try:
        sha = client.script_load("return ARGV[1] + 1")
        before = redis_counter.snapshot()
        assert client.evalsha(sha, 0, "41") == 42
        counted = redis_counter.delta(before)
    finally:
        client.close()
    assert (counted.commands, counted.round_trips) == (1, 1)
    assert counted.by_name == {"EVALSHA": 1}
    assert counted.texts == (f"EVALSHA {sha} 0 41",)


def test_inline_commands_are_counted_by_name(redis_counter: RedisCounter) -> None:
    with socket.create_connection(("127.0.0.1", redis_counter.port), timeout=5) as sock:
        sock.sendall(b"PING\r\nECHO hello\r\n")
        received = b""
        while received.count(b"\r\n") < 3:
            received += sock.recv(1024)
    assert received == b"+PONG\r\n$5\r\nhello\r\n"
    assert redis_counter.snapshot().by_name == {"ECHO": 1, "PING": 1}
