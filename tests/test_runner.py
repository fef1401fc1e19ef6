"""`make run`'s supervisor (scripts/run.py), for real: a killed Celery worker is restarted
while the web server keeps answering and /readyz says "degraded"; SIGTERM stops every
child; the server listens on loopback only.

The runner gets the test database and a Redis of its own (its worker must not take the
session worker's tasks), and skips migrate/seed (the test database is migrated).
"""

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from scripts.loopback import free_port
from tests.conftest import ROOT
from tests.conftest import test_environment as subprocess_environment
from tests.redis_support import PrivateRedis

pytestmark = pytest.mark.live

# Longer than /readyz's worker-check cache (5 s), so the gap without a worker is seen.
RESTART_BACKOFF_SECONDS = 8
_STARTED = re.compile(r"\[run\] started (?P<name>.+) \(pid (?P<pid>\d+)\)")


@dataclass
class Runner:
    process: subprocess.Popen[str]
    base: str
    port: int
    lines: "queue.Queue[str]" = field(default_factory=queue.Queue)
    seen: list[str] = field(default_factory=list)
    pids: dict[str, list[int]] = field(default_factory=dict)

    def wait_for_line(self, pattern: str, seconds: float) -> str:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no line matching {pattern!r}; output:\n" + "".join(self.seen))

    def pid(self, name: str) -> int:
        return self.pids[name][-1]


def _read(runner: Runner) -> None:
    assert runner.process.stdout is not None
    for line in runner.process.stdout:
        runner.seen.append(line)
        started = _STARTED.search(line)
        if started:
            runner.pids.setdefault(started["name"], []).append(int(started["pid"]))
        runner.lines.put(line)


@pytest.fixture
def runner(django_db_setup, tmp_path: Path) -> Iterator[Runner]:
    redis_server = PrivateRedis(tmp_path)
    redis_server.start()
    port = free_port()
    env = subprocess_environment()
    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "LIMITS_REDIS_URL", "BIND"):
        env.pop(name, None)
    env.update(
        REDIS_URL=redis_server.url,
        PORT=str(port),
        PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
        WEB_WORKERS="1",
        RUN_RESTART_BACKOFF_SECONDS=str(RESTART_BACKOFF_SECONDS),
        PYTHONUNBUFFERED="1",
    )
    process = subprocess.Popen(
        [sys.executable, "scripts/run.py", "--skip-setup", "--data-dir", str(tmp_path / "data")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    started = Runner(process=process, base=f"http://127.0.0.1:{port}", port=port)
    threading.Thread(target=_read, args=(started,), daemon=True).start()
    try:
        started.wait_for_line(r"fhirplatform is up", seconds=180)
        yield started
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        for pids in started.pids.values():
            for pid in pids:
                _group_kill(pid)
        redis_server.kill()


def _group_kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead, only not yet reaped by its parent.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return any(
        _alive(int(entry.name))
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and _pgid(int(entry.name)) == pgid
    )


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _readyz(base: str) -> tuple[int, dict]:
    response = requests.get(f"{base}/readyz", timeout=10)
    return response.status_code, response.json()


def _wait_for_status(base: str, wanted: str, seconds: float) -> dict:
    deadline = time.monotonic() + seconds
    last: dict = {}
    while time.monotonic() < deadline:
        status, last = _readyz(base)
        if last.get("status") == wanted:
            assert status == 200, last
            return last
        time.sleep(0.5)
    raise AssertionError(f"/readyz never said {wanted!r}; last answer {last}")


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on `port` (from /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for row in path.read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_a_killed_worker_is_restarted_while_web_and_beat_stay_up(runner):
    # Loopback only: 0100007F is 127.0.0.1 in /proc's hex; 00000000 would be every address.
    assert _listening_addresses(runner.port) == {"0100007F"}
    _wait_for_status(runner.base, "ready", seconds=120)
    worker = runner.pid("Celery worker")
    web, beat = runner.pid("web (gunicorn)"), runner.pid("Celery beat")

    os.kill(worker, signal.SIGKILL)
    runner.wait_for_line(r"Celery worker exited with -9; restarting", seconds=30)
    degraded = _wait_for_status(runner.base, "degraded", seconds=RESTART_BACKOFF_SECONDS + 10)
    assert degraded["checks"]["workers"]["ok"] is False
    assert degraded["checks"]["postgres"]["ok"] and degraded["checks"]["redis"]["ok"]
    assert requests.get(f"{runner.base}/healthz", timeout=10).status_code == 200
    assert not _group_alive(worker)  # the dead worker's pool processes went with it

    runner.wait_for_line(r"started Celery worker", seconds=RESTART_BACKOFF_SECONDS + 30)
    assert runner.pid("Celery worker") != worker
    _wait_for_status(runner.base, "ready", seconds=120)
    assert _alive(web) and _alive(beat)
    assert runner.pid("web (gunicorn)") == web and runner.pid("Celery beat") == beat


def test_sigterm_stops_every_child(runner):
    children = [pids[-1] for pids in runner.pids.values()]
    assert sorted(runner.pids) == [
        "Celery beat",
        "Celery export worker",
        "Celery worker",
        "web (gunicorn)",
    ]
    runner.process.send_signal(signal.SIGTERM)
    assert runner.process.wait(timeout=60) == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_group_alive(pid) for pid in children):
        time.sleep(0.2)
    assert not [pid for pid in children if _group_alive(pid)]
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{runner.base}/healthz", timeout=5)
