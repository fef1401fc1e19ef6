"""Schema switching behind a connection pooler in transaction mode (issue 9, item 1).

The schema is set with SET LOCAL inside the transaction that uses it, never for the
session, and a read names its schema in its one statement (fhirplatform/db/backend):
checked statement by statement on one connection, through a real PgBouncer whose one
server connection carries another tenant's path, then under concurrent two-tenant load
through a real PgBouncer with 4 shared server connections.
"""

import json
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg
import pytest
import requests
from django.db import DatabaseError, connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from psycopg.conninfo import conninfo_to_dict

from fhirplatform.fhir import services
from fhirplatform.fhir.models import Resource
from fhirplatform.schemas import schema_activate, schema_public, tenant_schema
from scripts.loopback import gunicorn
from tenants.models import Tenant
from tests.conftest import ROOT
from tests.conftest import test_environment as subprocess_environment
from tests.database_support import pgbouncer, unthrottled_tenant

FHIR_JSON = "application/fhir+json"
PATIENTS_PER_TENANT = 8
LOAD_THREADS_PER_TENANT = 4
LOAD_REQUESTS_PER_THREAD = 400
LOAD_SECONDS = 150


def _statements(captured: CaptureQueriesContext) -> list[str]:
    return [query["sql"] for query in captured.captured_queries]


def _session_default_path(url: str) -> str:
    with psycopg.connect(url) as fresh:
        row = fresh.execute("SHOW search_path").fetchone()
    assert row is not None
    return str(row[0])


def _created(client: Client, family: str) -> str:
    created = client.post(
        "/fhir/provider-a/Patient",
        json.dumps({"resourceType": "Patient", "name": [{"family": family}]}),
        content_type=FHIR_JSON,
    )
    assert created.status_code == 201, created.content
    return str(created.json()["id"])


@pytest.mark.usefixtures("committed")
def test_a_read_is_one_statement_that_names_its_schema(cast):
    token = cast.client_a.token()
    # If-Modified-Since: answered by the database, never by the response cache.
    client = Client(
        HTTP_AUTHORIZATION=f"Bearer {token}",
        HTTP_ACCEPT=FHIR_JSON,
        HTTP_IF_MODIFIED_SINCE="Mon, 01 Jan 2001 00:00:00 GMT",
    )
    path = f"/fhir/provider-a/Patient/{_created(client, 'Read')}"
    client.get(path)  # warm the per-process caches (limits config, token, consent snapshot)

    with CaptureQueriesContext(connection) as captured:
        assert client.get(path).status_code == 200

    # No transaction and no path: the statement says whose table it reads, and the audit
    # event's INSERT whose table it writes.
    store = [sql for sql in _statements(captured) if "tenants_" not in sql]
    assert len(store) == 2
    assert 'FROM "t_provider_a"."fhir_resource"' in store[0]
    assert store[1].startswith('INSERT INTO "t_provider_a".audit_auditevent ')


@pytest.mark.usefixtures("committed")
def test_a_write_sets_its_schema_once_with_its_begin(cast):
    token = cast.client_a.token()
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}", HTTP_ACCEPT=FHIR_JSON)
    _created(client, "Warm")

    with CaptureQueriesContext(connection) as captured:
        _created(client, "Write")

    store = [sql for sql in _statements(captured) if "tenants_" not in sql]
    # BEGIN and the SET LOCAL travel as one message (the backend's connection class);
    # the log lists them as the two statements they are. Nothing else sets a path. The
    # audit event is written in the same transaction.
    assert [sql.split(" ")[0] for sql in store] == ["BEGIN", "SET", "WITH", "INSERT", "COMMIT"]
    assert store[1] == 'SET LOCAL search_path = "t_provider_a","public"'


@pytest.mark.usefixtures("committed")
def test_tenant_work_never_leaves_a_search_path_on_the_session(cast):
    default = _session_default_path(subprocess_environment()["DATABASE_URL"])
    try:
        # Outside a transaction: the tenant statement gets a transaction of its own.
        schema_activate(cast.tenant_a)
        with CaptureQueriesContext(connection) as captured:
            Resource.objects.count()
        statements = _statements(captured)
        # (The log lists a statement when it ends: the SELECT after the COMMIT it ran before.)
        assert sorted(sql.split(" ")[0] for sql in statements) == [
            "BEGIN",
            "COMMIT",
            "SELECT",
            "SET",
        ]
        assert 'SET LOCAL search_path = "t_provider_a","public"' in statements
        assert connection.get_autocommit()
        with tenant_schema(cast.tenant_b):
            Resource.objects.count()
    finally:
        schema_public()
    # What the next client of a pooled server connection would inherit: nothing.
    row = connection.connection.execute("SHOW search_path").fetchone()
    assert row is not None and row[0] == default
    assert connection.connection.prepare_threshold is None


@pytest.mark.usefixtures("committed")
def test_a_transaction_whose_first_statement_fails_leaves_no_path_behind(cast):
    default = _session_default_path(subprocess_environment()["DATABASE_URL"])
    with (
        pytest.raises(DatabaseError),
        tenant_schema(cast.tenant_a),
        connection.cursor() as cursor,
    ):
        cursor.execute("SELECT * FROM no_such_table")  # sent with BEGIN; SET LOCAL
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SHOW search_path")
        assert cursor.fetchone() == (default,)
    with tenant_schema(cast.tenant_b), connection.cursor() as cursor:
        cursor.execute("SELECT current_schema()")
        assert cursor.fetchone() == ("t_payer_b",)


class _Rollback(Exception):
    pass


@pytest.mark.django_db
def test_a_savepoint_rolled_back_takes_its_schema_with_it(cast):
    marker = "savepoint-" + uuid.uuid4().hex[:8]
    with tenant_schema(cast.tenant_a):
        Resource.objects.create(
            resource_type="Basic",
            logical_id=marker,
            version_id=1,
            last_updated=timezone.now(),
            content={"resourceType": "Basic", "id": marker},
        )
    with transaction.atomic():
        schema_public()
        assert Tenant.objects.filter(pk=cast.tenant_a.pk).exists()  # SET LOCAL public
        try:
            with transaction.atomic():
                schema_activate(cast.tenant_a)
                assert Resource.objects.filter(logical_id=marker).exists()
                raise _Rollback
        except _Rollback:
            pass
        # ROLLBACK TO SAVEPOINT undid the SET LOCAL of the tenant: it is set again.
        assert Resource.objects.filter(logical_id=marker).exists()
        schema_public()


@contextmanager
def _connected_to(url: str) -> Iterator[None]:
    """This process's database connection made to `url` (the same database) for a while."""
    saved = dict(connection.settings_dict)
    params = conninfo_to_dict(url)
    connection.close()
    connection.settings_dict.update(HOST=params["host"], PORT=str(params["port"]))
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(saved)


def _pooled_schema(url: str) -> str:
    with psycopg.connect(url, autocommit=True) as client:
        row = client.execute("SELECT current_schema()").fetchone()
    assert row is not None
    return str(row[0])


@pytest.mark.usefixtures("committed")
def test_a_read_through_pgbouncer_ignores_a_path_left_on_the_server_connection(cast):
    """A read sets no path: it must not depend on the one its server connection has.

    One pooled server connection; another client leaves `SET search_path` to tenant B's
    schema on it (session-level, which transaction pooling hands on), and tenant B has a
    Patient with the same id as tenant A's. Reads, searches and writes of tenant A still
    see tenant A's rows only."""
    shared_id = str(uuid.uuid4())
    for tenant, family in ((cast.tenant_a, "Tenant-A"), (cast.tenant_b, "Tenant-B")):
        with tenant_schema(tenant):
            services.resource_create(
                resource_type="Patient",
                content={"resourceType": "Patient", "name": [{"family": family}]},
                source="pooler-test",
                logical_id=shared_id,
            )
    token = cast.client_a.token()
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}", HTTP_ACCEPT=FHIR_JSON)
    upstream = subprocess_environment()["DATABASE_URL"]
    with pgbouncer(upstream=upstream, pool_size=1) as pooled_url:
        with psycopg.connect(pooled_url, autocommit=True) as other_client:
            other_client.execute('SET search_path = "t_payer_b", public')
        # The path is really there for the next client of the server connection.
        assert _pooled_schema(pooled_url) == "t_payer_b"
        with _connected_to(pooled_url):
            read = client.get(f"/fhir/provider-a/Patient/{shared_id}")
            vread = client.get(f"/fhir/provider-a/Patient/{shared_id}/_history/1")
            search = client.get("/fhir/provider-a/Patient", {"_id": shared_id})
            written = _created(client, "Written-A")
        assert _pooled_schema(pooled_url) == "t_payer_b"
    assert read.status_code == 200 and read.json()["name"][0]["family"] == "Tenant-A"
    assert vread.status_code == 200 and vread.json()["name"][0]["family"] == "Tenant-A"
    assert [e["resource"]["name"][0]["family"] for e in search.json()["entry"]] == ["Tenant-A"]
    with tenant_schema(cast.tenant_a):
        assert Resource.objects.filter(logical_id=written).exists()
    with tenant_schema(cast.tenant_b):
        assert not Resource.objects.filter(logical_id=written).exists()


@pytest.mark.parametrize(
    ("pooler", "outcome"),
    [
        ("none", "False None"),
        ("session", "False None"),
        ("transaction", "True None"),
        ("statement", "ImproperlyConfigured"),
    ],
)
def test_pooler_modes(pooler, outcome):
    probe = (
        "import django\n"
        "try:\n"
        "    django.setup()\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__)\n"
        "else:\n"
        "    from django.conf import settings\n"
        "    db = settings.DATABASES['default']\n"
        "    print(db['DISABLE_SERVER_SIDE_CURSORS'], db['OPTIONS']['prepare_threshold'])\n"
    )
    env = subprocess_environment() | {"DATABASE_POOLER": pooler}
    result = subprocess.run(
        [sys.executable, "-c", probe],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.stdout.strip() == outcome, result.stderr


@dataclass
class _TenantUnderLoad:
    slug: str
    token: str
    patient_ids: list[str] = field(default_factory=list)


@dataclass
class _Tally:
    sent: int = 0
    wrong_rows: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, *, wrong_rows: int = 0, error: str | None = None) -> None:
        with self.lock:
            self.sent += 1
            self.wrong_rows += wrong_rows
            if error is not None:
                self.errors.append(error)


def _tenant_for_load(run: str, name: str) -> _TenantUnderLoad:
    slug = f"pool-{name}-{run}"
    return _TenantUnderLoad(slug=slug, token=unthrottled_tenant(slug=slug))


def _marked_patients(base: str, tenant: _TenantUnderLoad) -> None:
    headers = {"Authorization": f"Bearer {tenant.token}", "Content-Type": FHIR_JSON}
    for number in range(PATIENTS_PER_TENANT):
        patient = {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:pooler-test", "value": f"{tenant.slug}-{number}"}],
            "name": [{"family": tenant.slug}],
        }
        response = requests.post(
            f"{base}/fhir/{tenant.slug}/Patient", json=patient, headers=headers, timeout=30
        )
        assert response.status_code == 201, response.text
        tenant.patient_ids.append(response.json()["id"])


def _foreign_rows(resources: list[dict], tenant: _TenantUnderLoad) -> int:
    return sum(1 for resource in resources if resource["name"][0]["family"] != tenant.slug)


def _one_request(
    session: requests.Session, base: str, own: _TenantUnderLoad, other: _TenantUnderLoad
) -> tuple[int, str | None]:
    """One read, search or cross-tenant read; returns (wrong-tenant rows, error or None)."""
    kind = random.choice(("read", "search", "other"))
    if kind == "search":
        response = session.get(f"{base}/fhir/{own.slug}/Patient", params={"_count": 50})
        if response.status_code != 200:
            return 0, f"search {response.status_code} {response.text[:200]}"
        found = [entry["resource"] for entry in response.json().get("entry", [])]
        error = None if len(found) == PATIENTS_PER_TENANT else f"search found {len(found)}"
        return _foreign_rows(found, own), error
    if kind == "read":
        response = session.get(f"{base}/fhir/{own.slug}/Patient/{random.choice(own.patient_ids)}")
        if response.status_code != 200:
            return 0, f"read {response.status_code} {response.text[:200]}"
        return _foreign_rows([response.json()], own), None
    # The other tenant's id, with our own token and URL: it must not exist for us.
    response = session.get(f"{base}/fhir/{own.slug}/Patient/{random.choice(other.patient_ids)}")
    if response.status_code == 200:
        return 1, None
    return 0, None if response.status_code == 404 else f"other {response.status_code}"


def _load(base: str, own: _TenantUnderLoad, other: _TenantUnderLoad, tally: _Tally) -> None:
    deadline = time.monotonic() + LOAD_SECONDS
    with requests.Session() as session:
        session.headers.update({"Authorization": f"Bearer {own.token}", "Accept": FHIR_JSON})
        for _ in range(LOAD_REQUESTS_PER_THREAD):
            if time.monotonic() > deadline:
                return
            try:
                wrong, error = _one_request(session, base, own, other)
            except requests.RequestException as exc:
                wrong, error = 0, f"{type(exc).__name__}: {exc}"
            tally.add(wrong_rows=wrong, error=error)


@pytest.mark.live
@pytest.mark.usefixtures("committed")
def test_two_tenants_under_load_through_pgbouncer_in_transaction_mode():
    run = uuid.uuid4().hex[:6]
    tenants = (_tenant_for_load(run, "a"), _tenant_for_load(run, "b"))
    environment = subprocess_environment()
    with pgbouncer(upstream=environment["DATABASE_URL"], pool_size=4) as pooled_url:
        env = environment | {
            "DATABASE_URL": pooled_url,
            "DATABASE_POOLER": "transaction",
            "LOG_LEVEL": "ERROR",  # not one line per expected 404
        }
        with gunicorn(env=env, workers=3, threads=4) as base:
            for tenant in tenants:
                _marked_patients(base, tenant)
            tally = _Tally()
            threads = [
                threading.Thread(target=_load, args=(base, own, other, tally))
                for own, other in (tenants, tenants[::-1])
                for _ in range(LOAD_THREADS_PER_TENANT)
            ]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.monotonic() - started
    print(
        f"\npooler load: {tally.sent} requests in {elapsed:.1f} s, "
        f"{tally.wrong_rows} wrong-tenant rows, {len(tally.errors)} errors",
    )
    assert tally.wrong_rows == 0
    assert not tally.errors, f"{len(tally.errors)} errors, the first: {tally.errors[:3]}"
    assert tally.sent >= 1000, "too few requests for the load to mean anything"
