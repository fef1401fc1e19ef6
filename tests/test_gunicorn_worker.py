"""The platform's gunicorn worker (fhirplatform/gunicorn_worker.py) under a real gunicorn:
a worker whose every thread is busy leaves new connections to the others."""

import http.client
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from scripts.loopback import ROOT, free_port, wait_http

pytestmark = pytest.mark.live

WORKER = "fhirplatform.gunicorn_worker.ThreadWorker"


@pytest.fixture
def two_single_thread_workers() -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "gunicorn", "tests.wsgi_pid:application"),
            *("--worker-class", WORKER, "--workers", "2", "--threads", "1"),
            *("--bind", f"127.0.0.1:{port}", "--log-level", "warning"),
        ],
        cwd=ROOT,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", process)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_connections_opened_together_go_to_workers_with_a_free_thread(two_single_thread_workers):
    # Two connections opened before either sends: the worker that takes the first gives
    # its only thread to it, so the second must go to the other worker. A worker taking
    # both would answer the second only after the first (one in two, by chance).
    for _ in range(6):
        connections = [
            http.client.HTTPConnection("127.0.0.1", two_single_thread_workers, timeout=10)
            for _ in range(2)
        ]
        for connection in connections:
            connection.connect()
        time.sleep(0.3)  # both accepted by now
        pids = set()
        for connection in connections:
            connection.request("GET", "/")
            pids.add(connection.getresponse().read())
            connection.close()
        assert len(pids) == 2
