import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from fhirplatform.celery import EXPORT_QUEUE, app
from fhirplatform.limits import services as limit_services
from tests import conftest as session
from tests.fhir.export.export_support import ExportWorld, StartWorker, export_world


@pytest.fixture(scope="module")
def export(django_db_setup: Any, django_db_blocker: Any) -> Iterator[ExportWorld]:
    """A tenant of the module's own with generated data; its exports run on the session's
    real Celery worker."""
    with django_db_blocker.unblock():
        yield export_world()


@pytest.fixture(autouse=True)
def _no_throttle_event_writes(settings: Any) -> Iterator[None]:
    # Kick-offs in quick succession pass the count-only plan's export bucket (counted,
    # never refused). Their throttle events are not what these tests look at, and must not
    # be written after the test, by a thread or at exit, naming a rolled-back client.
    settings.LIMITS_EVENTS_BACKGROUND_FLUSH = False
    yield
    limit_services._events.counts.clear()


@pytest.fixture
def live(export: ExportWorld, committed: None, celery_worker_process: Any) -> ExportWorld:
    return export


@pytest.fixture
def workers(live: ExportWorld) -> Iterator[StartWorker]:
    """Start export workers of the test's own, with settings of its own (environment
    variables); the session's worker takes no exports until the test ends (Celery's
    cancel_consumer), so these are the only ones that run them."""
    app.control.cancel_consumer(EXPORT_QUEUE, reply=True, timeout=5)
    started: list[subprocess.Popen[bytes]] = []

    def start(environment: dict[str, str]) -> subprocess.Popen[bytes]:
        name = f"export-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
        command = [sys.executable, "-m", "celery", "-A", "fhirplatform", "worker"]
        command += ["--pool", "solo", "--queues", EXPORT_QUEUE, "--hostname", name]
        command += ["--loglevel", "warning", "--without-gossip", "--without-mingle"]
        env = session.test_environment() | environment
        process = subprocess.Popen(command, cwd=session.ROOT, env=env)
        started.append(process)
        deadline = time.monotonic() + 60
        while not app.control.ping(destination=[name], timeout=1.0):
            assert process.poll() is None and time.monotonic() < deadline, "no worker"
        return process

    yield start
    for process in started:
        process.kill()
        process.wait(timeout=15)
    app.control.add_consumer(EXPORT_QUEUE, reply=True, timeout=5)
