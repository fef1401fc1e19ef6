"""Shared cast for every test: two tenants (a provider and a payer), a client on each,
and an outsider client that belongs to another partner and has no grant on tenant A.

The cast is committed once per session in the test database, so a live server
subprocess and a Celery worker see it; tests that write use `db` (rolled back) or
create uniquely named objects through `committed`.
"""

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import pytest
import redis
from django.conf import settings
from django.db import connection
from django.test.utils import setup_databases, teardown_databases

from fhirplatform.celery import QUEUES
from fhirplatform.schemas import schema_public
from scripts.loopback import gunicorn
from tenants.models import ApiClient, Grant, Tenant
from tenants.scopes import scopes_parse
from tenants.services import client_create, tenant_create, token_issue
from tests.consent.enforcement_support import ConsentWorld, consent_world

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class CastClient:
    client: ApiClient
    secret: str
    grant: Grant

    def token(self, scopes: str | None = None) -> str:
        parsed = scopes_parse(scopes or self.grant.scopes)
        return token_issue(grant=self.grant, scopes=parsed, auth_method="test").access_token


@dataclass(frozen=True)
class Cast:
    tenant_a: Tenant
    tenant_b: Tenant
    client_a: CastClient
    client_b: CastClient
    outsider: CastClient


def _cast_client(partner: str, slug: str, scopes: str) -> CastClient:
    issued = client_create(partner_name=partner, tenant_slugs=[slug], scopes=scopes)
    assert issued.client_secret
    return CastClient(issued.client, issued.client_secret, issued.grants[0])


@pytest.fixture(scope="session")
def django_db_setup(
    request: pytest.FixtureRequest,
    django_test_environment: None,
    django_db_blocker: Any,
    django_db_keepdb: bool,
) -> Iterator[Cast]:
    """The test database and the cast, once per session.

    Replaces pytest-django's own fixture, which creates the database only when a selected
    test is marked django_db; tests driving a live server or a worker are not, and must
    find the database all the same.
    """
    with django_db_blocker.unblock():
        databases = setup_databases(
            verbosity=request.config.option.verbose,
            interactive=False,
            aliases={"default": {}},
            serialized_aliases={},
            keepdb=django_db_keepdb,
        )
        tenant_a = tenant_create(slug="provider-a", name="Provider A")
        tenant_b = tenant_create(slug="payer-b", name="Payer B")
        all_scopes = "system/*.cruds"
        yield Cast(
            tenant_a=tenant_a,
            tenant_b=tenant_b,
            client_a=_cast_client("Partner A", tenant_a.slug, all_scopes),
            client_b=_cast_client("Partner B", tenant_b.slug, all_scopes),
            outsider=_cast_client("Outsider Partner", tenant_b.slug, all_scopes),
        )
        # Servers and workers started by tests may still hold connections as they wind
        # down; end them so the test database can be dropped.
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        if not django_db_keepdb:
            teardown_databases(databases, verbosity=request.config.option.verbose)
        # The session's export files (tests/settings.py made the folder).
        if Path(settings.EXPORT_DIR).name.startswith("fp-test-exports-"):
            shutil.rmtree(settings.EXPORT_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def cast(django_db_setup: Cast) -> Cast:
    return django_db_setup


@pytest.fixture
def committed(django_db_setup: Cast, django_db_blocker: pytest.FixtureRequest) -> Iterator[None]:
    """Writes outside the per-test transaction, visible to live servers and workers."""
    with django_db_blocker.unblock():  # type: ignore[attr-defined]
        yield
        schema_public()


@pytest.fixture(scope="module")
def world(django_db_setup: Cast, django_db_blocker: Any) -> Iterator[ConsentWorld]:
    """A consent tenant of the module's own (tests/consent/enforcement_support.py): its
    policy and Consents would leak into other modules' tests otherwise."""
    with django_db_blocker.unblock():
        yield consent_world(uuid.uuid4().hex[:8])


@pytest.fixture
def unique_slug() -> str:
    return "t" + uuid.uuid4().hex[:10]


def test_environment() -> dict[str, str]:
    """Environment for subprocesses: the test database, the test Redis database."""
    # Same server and options as DATABASE_URL (TCP or a socket folder), the test database's name.
    configured = urlparse(os.environ["DATABASE_URL"])
    url = urlunparse(configured._replace(path="/" + settings.DATABASES["default"]["NAME"]))
    env = dict(os.environ)
    env.update(
        DATABASE_URL=url,
        REDIS_URL=settings.REDIS_URL,
        SECRET_KEY=settings.SECRET_KEY,
        PYTHONPATH=str(ROOT),
        DJANGO_SETTINGS_MODULE="tests.settings",
        LOG_LEVEL="WARNING",
    )
    return env


@pytest.fixture(scope="session")
def live_server_url(django_db_setup: Cast) -> Iterator[str]:
    """A real gunicorn serving the test database on a loopback port."""
    with gunicorn(env=test_environment(), workers=2, threads=4) as base:
        yield base


def _wait_for_a_worker(process: subprocess.Popen[bytes], seconds: float = 90) -> None:
    """Until the worker answers a ping: a probe asked earlier would find no worker."""
    from fhirplatform.celery import app

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the Celery worker exited with {process.returncode}")
        if app.control.ping(timeout=1.0, limit=1):
            return
    raise RuntimeError("the Celery worker did not answer a ping")


@pytest.fixture(scope="session")
def celery_worker_process(django_db_setup: Cast) -> Iterator[subprocess.Popen[bytes]]:
    """A real Celery worker consuming from the test Redis database."""
    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "fhirplatform",
            "worker",
            "--pool",
            "solo",
            "--loglevel",
            "warning",
            "--without-gossip",
            "--without-mingle",
            # The platform's queue and the bulk exports' (fhirplatform/celery.py task_routes).
            "--queues",
            ",".join(QUEUES),
            # A probe task the envelope tests send (tests/celery_probe.py).
            "--include",
            "tests.celery_probe",
        ],
        cwd=ROOT,
        env=test_environment(),
    )
    try:
        _wait_for_a_worker(process)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=15)
