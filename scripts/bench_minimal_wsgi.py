"""The floor for a FHIR read in scripts/bench_fhir.py: a bare WSGI function and psycopg,
no Django, no token, no limits.

    GET /minimal/<schema>/<resource_type>/<logical_id>   the stored JSON of that resource
    GET /healthz

One PostgreSQL connection per server thread, opened on first use and reused; one
statement per read, naming the tenant's table by schema, with the key the platform reads
by. Like the platform it never prepares statements server-side (a transaction pooler may
sit in between), so what separates the two is the work each does, not the protocol.

    DATABASE_URL=... gunicorn scripts.bench_minimal_wsgi:application
"""

import os
import re
import threading
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
from psycopg import sql

# The store table of a tenant schema (fhirplatform.fhir.models.Resource); bench_fhir.py
# checks that the two agree before it starts this server.
RESOURCE_TABLE = "fhir_resource"
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

StartResponse = Callable[[str, list[tuple[str, str]]], Any]

_per_thread = threading.local()
_queries: dict[str, bytes] = {}


def _connection() -> psycopg.Connection[Any]:
    connection: psycopg.Connection[Any] | None = getattr(_per_thread, "connection", None)
    if connection is None or connection.closed:
        connection = psycopg.connect(
            os.environ["DATABASE_URL"], autocommit=True, prepare_threshold=None
        )
        _per_thread.connection = connection
    return connection


def _read_query(schema: str) -> bytes:
    query = _queries.get(schema)
    if query is None:
        composed = sql.SQL(
            "SELECT content::text FROM {} WHERE resource_type = %s AND logical_id = %s"
        ).format(sql.Identifier(schema, RESOURCE_TABLE))
        query = _queries[schema] = composed.as_bytes(None)
    return query


def _answer(start_response: StartResponse, status: str, body: bytes) -> list[bytes]:
    start_response(
        status,
        [("Content-Type", "application/fhir+json"), ("Content-Length", str(len(body)))],
    )
    return [body]


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    parts = environ.get("PATH_INFO", "").strip("/").split("/")
    if parts == ["healthz"]:
        return _answer(start_response, "200 OK", b'{"status":"ok"}')
    if len(parts) != 4 or parts[0] != "minimal" or not _SCHEMA_NAME.fullmatch(parts[1]):
        return _answer(start_response, "404 Not Found", b'{"error":"not found"}')
    _, schema, resource_type, logical_id = parts
    try:
        row = _connection().execute(_read_query(schema), (resource_type, logical_id)).fetchone()
    except psycopg.OperationalError:
        _per_thread.connection = None  # reconnect on the next request
        return _answer(start_response, "503 Service Unavailable", b'{"error":"database"}')
    if row is None:
        return _answer(start_response, "404 Not Found", b'{"error":"not found"}')
    return _answer(start_response, "200 OK", row[0].encode())
