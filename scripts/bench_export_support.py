"""What scripts/bench_export.py measures with: one Bulk Data export over HTTP (kick-off,
polls that respect Retry-After, the manifest), its files checked against the store and
removed, a COPY of the same rows to a file, tenant B's paced reads, and a Celery worker
of the benchmark's own."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import psycopg
import requests
from psycopg import sql

from scripts.bench_limits_support import pct

FHIR_JSON = "application/fhir+json"
# Queues the worker consumes: the export's own and the default one (either may carry it).
WORKER_QUEUES = "export,fhirplatform"
WORKER_READY_SECONDS = 120.0

Headers = Callable[[], dict[str, str]]  # called per use: a fresh token each time


class ExportUnavailable(RuntimeError):
    """The kick-off was not accepted (no export yet, or refused): what it answered."""


def _retry_after(response: requests.Response, default: float = 1.0) -> float:
    """Retry-After in seconds: a number, or an HTTP date (RFC 9110)."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return default
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return default


@dataclass
class ExportRun:
    """One export, as a client that does what the server says sees it."""

    status_url: str
    kickoff_seconds: float  # kick-off sent -> its 202 read
    seconds: float = 0.0  # kick-off sent -> the 200 manifest read
    last_wait_seconds: float = 0.0  # the last 202 read -> the 200 read (poll granularity)
    polls: int = 0
    throttled: int = 0  # 429s answered to polls
    # Polls sent on a kept-alive connection the server closed meanwhile, sent again on a
    # new one: gunicorn closes an idle connection after its keep-alive (2 s by default),
    # as long as the Retry-After the client waited.
    reconnects: int = 0
    progress: list[str] = field(default_factory=list)  # X-Progress values, each once
    retry_after: list[float] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def job_id(self) -> str:
        return self.status_url.rstrip("/").rsplit("/", 1)[-1]

    @property
    def counts(self) -> dict[str, int]:
        """Resources per type, the manifest's counts summed over each type's files."""
        counted: Counter[str] = Counter()
        for output in self.manifest.get("output", []):
            counted[output["type"]] += int(output.get("count", 0))
        return dict(counted)

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    @property
    def per_second(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0


def export_kickoff(
    session: requests.Session, base: str, headers: Headers, path: str = "$export", tries: int = 5
) -> ExportRun:
    """`GET {base}/{path}` with Prefer: respond-async; a 429 (another export still
    running, a cap) is waited out as Retry-After says, `tries` times."""
    for _ in range(tries):
        started = time.perf_counter()
        response = session.get(
            f"{base}/{path}",
            headers=headers() | {"Accept": FHIR_JSON, "Prefer": "respond-async"},
            timeout=60,
        )
        elapsed = time.perf_counter() - started
        if response.status_code == 429:
            time.sleep(_retry_after(response))
            continue
        location = response.headers.get("Content-Location", "")
        if response.status_code != 202 or not location.startswith(f"{base}/$export-status/"):
            raise ExportUnavailable(
                f"kick-off {path}: {response.status_code}, Content-Location {location!r}: "
                f"{response.text[:300]}"
            )
        return ExportRun(status_url=location, kickoff_seconds=elapsed)
    raise ExportUnavailable(f"kick-off {path}: still 429 after {tries} tries")


def export_wait(
    session: requests.Session,
    run: ExportRun,
    headers: Headers,
    started: float,
    timeout: float = 600.0,
) -> ExportRun:
    """Poll the status URL until its 200 manifest, sleeping what each Retry-After says."""
    deadline = started + timeout
    last_202 = started
    while time.perf_counter() < deadline:
        try:
            response = session.get(run.status_url, headers=headers(), timeout=60)
        except requests.ConnectionError:
            run.reconnects += 1
            response = session.get(run.status_url, headers=headers(), timeout=60)
        run.polls += 1
        if response.status_code == 200:
            run.seconds = time.perf_counter() - started
            run.last_wait_seconds = time.perf_counter() - last_202
            run.manifest = response.json()
            return run
        if response.status_code not in (202, 429):
            raise RuntimeError(f"export status: {response.status_code} {response.text[:500]}")
        wait = _retry_after(response)
        if response.status_code == 429:
            run.throttled += 1
        else:
            last_202 = time.perf_counter()
            run.retry_after.append(wait)
            progress = response.headers.get("X-Progress", "")
            if progress and (not run.progress or run.progress[-1] != progress):
                run.progress.append(progress)
        time.sleep(wait)
    raise RuntimeError(f"export {run.status_url} not done in {timeout:.0f} s")


def export_run(
    base: str, headers: Headers, path: str = "$export", timeout: float = 600.0
) -> ExportRun:
    """Kick-off to manifest, timed from just before the kick-off is sent."""
    with requests.Session() as session:
        started = time.perf_counter()
        run = export_kickoff(session, base, headers, path)
        return export_wait(session, run, headers, started, timeout)


@dataclass(frozen=True)
class FilesCheck:
    lines: dict[str, int]  # NDJSON lines per type, over the type's files
    size: int  # bytes downloaded
    seconds: float
    problems: list[str]


def export_files_check(run: ExportRun, headers: Headers, expected: dict[str, int]) -> FilesCheck:
    """Download every output file (with the token, as requiresAccessToken says) and check
    it line by line: JSON of the file's type, as many as the manifest counts, and per type
    as many as the store holds (`expected`, resources not deleted)."""
    problems: list[str] = []
    manifest = run.manifest
    if manifest.get("requiresAccessToken") is not True:
        problems.append(f"requiresAccessToken is {manifest.get('requiresAccessToken')!r}")
    for key in ("transactionTime", "request", "output", "error"):
        if key not in manifest:
            problems.append(f"manifest has no {key}")
    lines: Counter[str] = Counter()
    size = 0
    started = time.perf_counter()
    with requests.Session() as session:
        for output in manifest.get("output", []):
            kind, url = output["type"], output["url"]
            count = 0
            with session.get(url, headers=headers(), stream=True, timeout=120) as response:
                if response.status_code != 200:
                    problems.append(f"{url}: {response.status_code}")
                    continue
                for line in response.iter_lines():
                    size += len(line) + 1
                    if not line:
                        continue
                    count += 1
                    resource = json.loads(line)
                    if resource.get("resourceType") != kind:
                        problems.append(f"{url}: a {resource.get('resourceType')} in a {kind} file")
                        break
            if count != int(output.get("count", -1)):
                problems.append(f"{url}: {count} lines, the manifest says {output.get('count')}")
            lines[kind] += count
    seconds = time.perf_counter() - started
    for kind in sorted(set(expected) | set(lines)):
        if lines[kind] != expected.get(kind, 0):
            problems.append(f"{kind}: {lines[kind]} exported, {expected.get(kind, 0)} stored")
    return FilesCheck(dict(lines), size, seconds, problems)


def export_delete(run: ExportRun, headers: Headers, check: bool) -> list[str]:
    """DELETE the status URL (202: cancelled, its files removed); with `check`, the status
    URL and a file's URL must be gone afterwards."""
    problems = []
    with requests.Session() as session:
        deleted = session.delete(run.status_url, headers=headers(), timeout=60)
        if deleted.status_code != 202:
            problems.append(f"DELETE {run.status_url}: {deleted.status_code}")
        if check:
            status = session.get(run.status_url, headers=headers(), timeout=60)
            if status.status_code not in (404, 410):
                problems.append(f"status after DELETE: {status.status_code}")
            for output in run.manifest.get("output", [])[:1]:
                after = session.get(output["url"], headers=headers(), timeout=60)
                if after.status_code not in (404, 410):
                    problems.append(f"a file after DELETE: {after.status_code}")
    return problems


@dataclass(frozen=True)
class CopyRun:
    rows: int
    size: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def copy_to_file(database_url: str, schema: str, table: str, path: Path) -> CopyRun:
    """`COPY (SELECT content FROM schema.table WHERE NOT deleted) TO STDOUT` into a file,
    timed from the connection's first statement to the file's close (the connection is
    opened before: an export's worker holds one already)."""
    query = sql.SQL("COPY (SELECT content FROM {} WHERE NOT deleted) TO STDOUT").format(
        sql.Identifier(schema, table)
    )
    size = 0
    with psycopg.connect(database_url, autocommit=True) as connection:
        started = time.perf_counter()
        with connection.cursor() as cursor, path.open("wb") as out:
            with cursor.copy(query) as copy:
                for data in copy:
                    out.write(data)
                    size += len(data)
            rows = cursor.rowcount
        seconds = time.perf_counter() - started
    path.unlink()
    return CopyRun(rows, size, seconds)


@dataclass
class Reads:
    """Latencies (seconds) of paced reads, when each was sent (epoch seconds), and the
    answers."""

    latencies: list[float] = field(default_factory=list)
    sent: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    seconds: float = 0.0

    def p(self, q: float) -> float:
        return pct(self.latencies, q) if self.latencies else float("nan")

    def within(self, start: float, end: float) -> "Reads":
        """The reads sent from `start` to `end` (epoch seconds; answers not kept)."""
        kept = [
            (t, lat) for t, lat in zip(self.sent, self.latencies, strict=True) if start <= t <= end
        ]
        return Reads([lat for _, lat in kept], [t for t, _ in kept], seconds=end - start)


def _reader(
    base: str, ids: list[str], headers: dict[str, str], pause: float, stop: threading.Event
) -> Reads:
    picker = random.Random(threading.get_ident())  # which patient: not security
    reads = Reads()
    with requests.Session() as session:
        session.headers.update(headers)
        while not stop.is_set():
            url = f"{base}/Patient/{picker.choice(ids)}"
            reads.sent.append(time.time())
            started = time.perf_counter()
            response = session.get(url, timeout=30)
            reads.latencies.append(time.perf_counter() - started)
            reads.statuses[response.status_code] += 1
            stop.wait(pause)
    return reads


@contextmanager
def paced_reads(
    base: str, ids: list[str], headers: dict[str, str], *, readers: int, pause: float
) -> Iterator[Reads]:
    """`readers` threads reading random patients one request at a time, `pause` apart,
    from entering the block to leaving it: the yielded Reads is filled on exit."""
    stop, found = threading.Event(), Reads()
    results: list[Reads] = []

    def run() -> None:
        results.append(_reader(base, ids, headers, pause, stop))

    threads = [threading.Thread(target=run, daemon=True) for _ in range(readers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    try:
        yield found
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        found.seconds = time.perf_counter() - started
        for result in results:
            found.latencies.extend(result.latencies)
            found.sent.extend(result.sent)
            found.statuses.update(result.statuses)


def reads_text(reads: Reads) -> str:
    others = {s: n for s, n in reads.statuses.items() if s != 200}
    text = (
        f"p50 {1000 * reads.p(0.50):6.2f} ms  p95 {1000 * reads.p(0.95):6.2f} ms  "
        f"p99 {1000 * reads.p(0.99):6.2f} ms  ({len(reads.latencies)} reads in "
        f"{reads.seconds:.1f} s)"
    )
    return text + (f"  not 200: {others}" if others else "")


@dataclass(frozen=True)
class Worker:
    name: str
    pid: int


def _worker_answers(name: str) -> bool:
    from fhirplatform.celery import app

    with suppress(Exception):  # the broker not answering yet is the same as no answer
        return bool(app.control.ping(destination=[name], timeout=1.0))
    return False


@contextmanager
def celery_worker(env: dict[str, str], log: Path, root: Path) -> Iterator[Worker]:
    """A Celery worker (prefork, one process) consuming the export queues, in a session
    of its own so that stopping it stops the pool process it forked; up once it answers
    a ping by its name."""
    name = f"bench-export-{uuid.uuid4().hex[:8]}@%h"
    with log.open("ab") as output:
        process = subprocess.Popen(
            [
                # As `make run` starts its export worker (scripts/run.py): below the web
                # server's CPU priority.
                *("nice", "-n", "10"),
                sys.executable,
                *("-m", "celery", "-A", "fhirplatform", "worker"),
                *("--pool", "prefork", "--concurrency", "1", "-Q", WORKER_QUEUES),
                *("--without-gossip", "--without-mingle", "--loglevel", "warning"),
                *("-n", name),
            ],
            cwd=root,
            env=env | {"PYTHONPATH": str(root)},
            stdout=output,
            stderr=output,
            start_new_session=True,
        )
    resolved = name.replace("%h", os.uname().nodename)
    try:
        deadline = time.monotonic() + WORKER_READY_SECONDS
        while not _worker_answers(resolved):
            if process.poll() is not None:
                raise RuntimeError(f"the Celery worker exited with {process.returncode} ({log})")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Celery worker did not answer a ping ({log})")
            time.sleep(0.5)
        yield Worker(resolved, process.pid)
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)  # the group of the process started above
        with suppress(subprocess.TimeoutExpired):  # then SIGKILL
            process.wait(timeout=20)
        with suppress(ProcessLookupError):  # a pool process its master left behind
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
