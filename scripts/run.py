"""`make run`: migrate, seed the demo, then run web + Celery worker + beat until Ctrl-C.

Expects DATABASE_URL, REDIS_URL and SECRET_KEY in the environment (the Makefile
sources them from .data/services.env, written by scripts/services.py).
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def manage(*args: str) -> None:
    subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, check=True)


def start(name: str, args: list[str]) -> subprocess.Popen[bytes]:
    print(f"[run] starting {name}", flush=True)
    return subprocess.Popen(args, cwd=ROOT, start_new_session=True)


def wait_ready(
    url: str, processes: dict[str, subprocess.Popen[bytes]], seconds: float = 60
) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if any(process.poll() is not None for process in processes.values()):
            return False
        try:
            response = requests.get(url, timeout=10)
            if response.status_code == 200:
                print(f"[run] {url} -> {response.text}", flush=True)
                return True
        except requests.RequestException:
            pass
        time.sleep(0.5)
    return False


def stop_all(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    for process in processes.values():
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for name, process in processes.items():
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        print(f"[run] {name} stopped", flush=True)


def main() -> int:
    port = os.environ.get("PORT", "8000")
    os.environ.setdefault("PUBLIC_BASE_URL", f"http://localhost:{port}")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fhirplatform.settings")
    data = ROOT / ".data"
    data.mkdir(exist_ok=True)
    # Web workers are processes: prometheus_client aggregates their samples from this folder.
    metrics_dir = data / "prometheus"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)

    manage("migrate_schemas", "--executor", "standard", "-v", "0")
    manage("collectstatic", "--noinput", "-v", "0")
    manage("seed_demo")

    processes: dict[str, subprocess.Popen[bytes]] = {}
    processes["web"] = start(
        "web (gunicorn)",
        [
            PYTHON,
            "-m",
            "gunicorn",
            "fhirplatform.wsgi:application",
            "--bind",
            f"0.0.0.0:{port}",
            "--workers",
            os.environ.get("WEB_WORKERS", "2"),
            "--threads",
            "8",
            "--access-logfile",
            "-",
            "--log-level",
            "warning",
        ],
    )
    processes["worker"] = start(
        "Celery worker",
        [
            PYTHON,
            "-m",
            "celery",
            "-A",
            "fhirplatform",
            "worker",
            "--concurrency",
            "2",
            "--loglevel",
            "info",
            "--without-gossip",
        ],
    )
    processes["beat"] = start(
        "Celery beat",
        [
            PYTHON,
            "-m",
            "celery",
            "-A",
            "fhirplatform",
            "beat",
            "--loglevel",
            "info",
            "--schedule",
            str(data / "celerybeat-schedule"),
        ],
    )

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Installed explicitly: a shell that starts us in the background ignores SIGINT.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        if not wait_ready(f"http://127.0.0.1:{port}/readyz", processes):
            print("[run] the platform did not become ready", file=sys.stderr, flush=True)
            return 1
        print(
            f"\n[run] fhirplatform is up on http://localhost:{port}\n"
            f"      admin   http://localhost:{port}/admin/\n"
            f"      FHIR    http://localhost:{port}/fhir/<tenant>/metadata\n"
            f"      probes  http://localhost:{port}/healthz  /readyz   metrics /metrics\n"
            f"      PostgreSQL {os.environ.get('DATABASE_URL')}\n"
            f"      Redis      {os.environ.get('REDIS_URL')}\n"
            "      demo credentials: printed above, kept in .data/demo-credentials.json\n"
            "      Ctrl-C stops web, worker and beat.\n",
            flush=True,
        )
        while True:
            for name, process in processes.items():
                if process.poll() is not None:
                    print(f"[run] {name} exited with {process.returncode}", file=sys.stderr)
                    return 1
            time.sleep(1)
    except KeyboardInterrupt:
        print("\n[run] stopping", flush=True)
        return 0
    finally:
        stop_all(processes)


if __name__ == "__main__":
    sys.exit(main())
