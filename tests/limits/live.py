"""Real processes for the limit tests: a gunicorn of our own and a redis-server of our own."""

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis
import requests

from tests.conftest import ROOT, free_port, test_environment


def wait_http(url: str, process: subprocess.Popen[bytes], seconds: float = 60) -> None:
    """Wait for a 200, tolerating a busy machine where the first answer takes seconds."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


@contextmanager
def gunicorn(*, workers: int, threads: int, env: dict[str, str] | None = None) -> Iterator[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "fhirplatform.wsgi:application",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--threads",
            str(threads),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=test_environment() | {"PUBLIC_BASE_URL": base} | (env or {}),
    )
    try:
        wait_http(f"{base}/healthz", process)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=15)


class RedisServer:
    """A throwaway redis-server on its own port, so stopping it never touches the shared one."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis.from_url(self.url).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}


def patient_create(base: str, tenant: str, token: str) -> str:
    response = requests.post(
        f"{base}/fhir/{tenant}/Patient",
        json={"resourceType": "Patient", "name": [{"family": "Limit"}]},
        headers=bearer(token) | {"Content-Type": "application/fhir+json"},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])
