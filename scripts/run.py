"""`make run`: migrate, seed the demo, then run web + Celery worker + beat until Ctrl-C.

This process supervises the three: one that exits (a crash, an out-of-memory kill, a
`kill -9`) is restarted after a backoff (RUN_RESTART_BACKOFF_SECONDS, doubling up to
30 s, back to the start once it has stayed up a minute) while the others keep running.
A dead worker therefore degrades the platform (/readyz says "degraded") instead of
taking the web server down with it. Ctrl-C or SIGTERM stops all of them.

The web server listens on BIND (default 127.0.0.1): the demo prints working
credentials, so it is published to the network only when BIND says so (BIND=0.0.0.0).

Expects DATABASE_URL, REDIS_URL and SECRET_KEY in the environment (the Makefile
sources them from .data/services.env, written by scripts/services.py).
"""

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
DEFAULT_BIND = "127.0.0.1"
MAX_BACKOFF_SECONDS = 30.0
# A child that stayed up this long is healthy again: its next crash restarts it quickly.
STABLE_SECONDS = 60.0
STOP_GRACE_SECONDS = 15
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Set by Ctrl-C / SIGTERM. A flag, not an exception: one raised between starting a child
# and recording it would leave that child running after we exit.
STOP = threading.Event()
# Where the readiness probe reaches a server bound to every address.
_PROBE_HOST = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104 (a lookup, not a bind)


@dataclass
class Child:
    """One supervised process: how to start it and how it has been doing."""

    name: str
    args: list[str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    quick_exits: int = 0
    restart_at: float = 0.0


def manage(*args: str) -> None:
    subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, check=True)


def child_start(child: Child) -> None:
    # Its own session: a signal to the child's group reaches the processes it forks too.
    child.process = subprocess.Popen(child.args, cwd=ROOT, start_new_session=True)
    child.started_at = time.monotonic()
    print(f"[run] started {child.name} (pid {child.process.pid})", flush=True)


def _group_signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone
        os.killpg(pid, signum)


def _reap(child: Child) -> None:
    """Kill what the child forked and left behind (a killed worker's pool processes)."""
    if child.process is not None:
        _group_signal(child.process.pid, signal.SIGKILL)
        child.process.wait()


def children_stop(children: list[Child]) -> None:
    """SIGTERM to every child's group at once, SIGKILL for what outlives the grace period."""
    started = time.monotonic()
    running = [(child, child.process) for child in children if child.process is not None]
    for _, process in running:
        _group_signal(process.pid, signal.SIGTERM)
    for child, process in running:
        remaining = max(started + STOP_GRACE_SECONDS - time.monotonic(), 0)
        with contextlib.suppress(subprocess.TimeoutExpired):  # then SIGKILL, in _reap
            process.wait(timeout=remaining)
        _reap(child)
        print(f"[run] {child.name} stopped ({time.monotonic() - started:.1f} s)", flush=True)


def backoff_seconds(quick_exits: int, start: float) -> float:
    return float(min(start * 2 ** max(quick_exits - 1, 0), MAX_BACKOFF_SECONDS))


def supervise(children: list[Child], *, backoff_start: float) -> None:
    """One pass: restart what exited, once its backoff has passed."""
    now = time.monotonic()
    for child in children:
        process = child.process
        if process is not None and process.poll() is None:
            if now - child.started_at > STABLE_SECONDS:
                child.quick_exits = 0
            continue
        if process is not None:
            code = process.returncode
            _reap(child)
            child.process = None
            child.quick_exits += 1
            delay = backoff_seconds(child.quick_exits, backoff_start)
            child.restart_at = now + delay
            print(
                f"[run] {child.name} exited with {code}; restarting in {delay:g} s",
                file=sys.stderr,
                flush=True,
            )
        elif now >= child.restart_at:
            child_start(child)


def wait_ready(url: str, children: list[Child], *, backoff_start: float, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not STOP.is_set():
        supervise(children, backoff_start=backoff_start)
        try:
            response = requests.get(url, timeout=5)
            if response.status_code == 200:
                print(f"[run] {url} -> {response.text}", flush=True)
                return True
        except requests.RequestException:
            pass
        STOP.wait(0.5)
    return False


def bind_address(host: str, port: str) -> str:
    """gunicorn's --bind for a host and port; an IPv6 host goes in brackets."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def children_for(*, bind: str, data: Path) -> list[Child]:
    web = [
        PYTHON,
        "-m",
        "gunicorn",
        "fhirplatform.wsgi:application",
        "--config",
        "python:fhirplatform.gunicorn_conf",
        "--bind",
        bind,
        "--workers",
        os.environ.get("WEB_WORKERS", "2"),
        "--threads",
        os.environ.get("WEB_THREADS", "4"),
        "--access-logfile",
        "-",
        "--log-level",
        "warning",
    ]
    celery = [PYTHON, "-m", "celery", "-A", "fhirplatform"]
    worker = [*celery, "worker", "--concurrency", "2", "--loglevel", "info", "--without-gossip"]
    # Bulk exports on a worker of their own (queue `export`, fhirplatform/celery.py), at a
    # lower CPU priority than the web server, which comes first for the CPU.
    exports = [
        "nice",
        "-n",
        "10",
        *celery,
        "worker",
        "--queues",
        "export",
        "--concurrency",
        os.environ.get("EXPORT_WORKERS", "1"),
        "--hostname",
        "export@%h",
        "--loglevel",
        "info",
        "--without-gossip",
    ]
    beat = [*celery, "beat", "--loglevel", "info", "--schedule", str(data / "celerybeat-schedule")]
    return [
        Child("web (gunicorn)", web),
        Child("Celery worker", worker),
        Child("Celery export worker", exports),
        Child("Celery beat", beat),
    ]


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run web, Celery worker and beat, supervised.")
    parser.add_argument(
        "--skip-setup",
        action="store_true",
        help="start and supervise the processes only: no migrate, collectstatic or demo seed",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=ROOT / ".data", help="metrics and beat schedule files"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = _arguments(argv)
    port = os.environ.get("PORT", "8000")
    host = os.environ.get("BIND", "").strip() or DEFAULT_BIND
    backoff_start = float(os.environ.get("RUN_RESTART_BACKOFF_SECONDS", "1"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fhirplatform.settings")
    data: Path = options.data_dir
    data.mkdir(parents=True, exist_ok=True)
    # Web workers are processes: prometheus_client aggregates their samples from this folder.
    metrics_dir = data / "prometheus"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)

    if not options.skip_setup:
        manage("migrate_schemas", "--executor", "standard", "-v", "0")
        manage("collectstatic", "--noinput", "-v", "0")
        manage("seed_demo")

    def on_signal(signum: int, frame: object) -> None:
        STOP.set()

    # Installed explicitly: a shell that starts us in the background ignores SIGINT.
    for signum in STOP_SIGNALS:
        signal.signal(signum, on_signal)
    children = children_for(bind=bind_address(host, port), data=data)
    shown = "localhost" if host in ("127.0.0.1", "localhost", "::1") else host
    ready_url = f"http://{bind_address(_PROBE_HOST.get(host, host), port)}/readyz"
    try:
        if not wait_ready(ready_url, children, backoff_start=backoff_start, seconds=90):
            if STOP.is_set():
                return 0
            print("[run] the platform did not become ready", file=sys.stderr, flush=True)
            return 1
        print(
            f"\n[run] fhirplatform is up on http://{shown}:{port} (listening on {host})\n"
            f"      admin   http://{shown}:{port}/admin/\n"
            f"      FHIR    http://{shown}:{port}/fhir/<tenant>/metadata\n"
            f"      probes  http://{shown}:{port}/healthz  /readyz   metrics /metrics\n"
            f"      PostgreSQL {os.environ.get('DATABASE_URL')}\n"
            f"      Redis      {os.environ.get('REDIS_URL')}\n"
            "      demo credentials: printed above, kept in .data/demo-credentials.json\n"
            "      A crashed worker, beat or web server is restarted; Ctrl-C stops them all.\n",
            flush=True,
        )
        while not STOP.is_set():
            supervise(children, backoff_start=backoff_start)
            STOP.wait(0.5)
        return 0
    finally:
        print("\n[run] stopping", flush=True)
        children_stop(children)


if __name__ == "__main__":
    sys.exit(main())
