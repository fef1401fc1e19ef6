"""Real servers on loopback for tests and benchmarks: a free port, a gunicorn, a wait."""

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
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


PLATFORM_APP = "fhirplatform.wsgi:application"


@dataclass(frozen=True)
class Server:
    url: str
    pid: int  # gunicorn's master; its workers are its children


@contextmanager
def gunicorn(
    *, env: dict[str, str], workers: int, threads: int, root: Path = ROOT
) -> Iterator[str]:
    """The platform under gunicorn on a free loopback port; yields its base URL.

    `root` is the checkout whose code it runs (benchmarks compare against an older one)."""
    with gunicorn_server(env=env, workers=workers, threads=threads, root=root) as server:
        yield server.url


@contextmanager
def gunicorn_server(
    *,
    env: dict[str, str],
    workers: int,
    threads: int,
    root: Path = ROOT,
    app: str = PLATFORM_APP,
    log: Path | None = None,
    startup_seconds: float = 60,
) -> Iterator[Server]:
    """A WSGI app (the platform unless `app` says otherwise) under gunicorn on a free
    loopback port, which must answer /healthz; yields its URL and master's pid.
    Its output goes to `log` if given, else to ours."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # The platform's own errors as OperationOutcomes; a checkout older than that module,
    # or another app, has none.
    config = (
        ["--config", "python:fhirplatform.gunicorn_conf"]
        if app == PLATFORM_APP and (root / "fhirplatform" / "gunicorn_conf.py").exists()
        else []
    )
    with ExitStack() as files:
        output = files.enter_context(log.open("ab")) if log is not None else None
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                app,
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
            stdout=output,
            stderr=output,
        )
        try:
            wait_http(f"{base}/healthz", process, seconds=startup_seconds)
            yield Server(base, process.pid)
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:  # a master still booting its workers
                process.kill()
                process.wait()
