"""Real servers on loopback for tests and benchmarks: a free port, a gunicorn, a wait."""

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
def gunicorn(
    *, env: dict[str, str], workers: int, threads: int, root: Path = ROOT
) -> Iterator[str]:
    """The platform under gunicorn on a free loopback port; yields its base URL.

    `root` is the checkout whose code it runs (benchmarks compare against an older one)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # gunicorn's own errors as OperationOutcomes; a checkout older than that module has none.
    config = (
        ["--config", "python:fhirplatform.gunicorn_conf"]
        if (root / "fhirplatform" / "gunicorn_conf.py").exists()
        else []
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "fhirplatform.wsgi:application",
            *config,
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--threads",
            str(threads),
            "--log-level",
            "warning",
        ],
        cwd=root,
        env=env | {"PUBLIC_BASE_URL": base, "PYTHONPATH": str(root)},
    )
    try:
        wait_http(f"{base}/healthz", process)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=15)
