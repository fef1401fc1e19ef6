"""Exports under stress, on workers of the test's own: a worker killed mid-export leaves
a running job whose recorded files are whole and never served as a result, and the job
resumes after its last recorded file; a job cancelled mid-run stops and leaves no file;
a worker yields to interactive traffic; expired jobs go with their files.

These workers (conftest.py `workers`) write five resources per file and check the load
after every resource.
"""

import json
import math
import os
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis
from django.conf import settings
from django.test import Client
from django.utils import timezone

from fhirplatform.celery import EXPORT_QUEUE
from fhirplatform.fhir.export.models import ExportFile, ExportJob, ExportStatus
from fhirplatform.fhir.export.tasks import export_expire_all, export_reap_all
from fhirplatform.limits.store import ADAPTIVE_KEY, GLOBAL_INFLIGHT_KEY
from fhirplatform.schemas import tenant_schema
from tenants.services import client_revoke
from tests.fhir.export.export_support import (
    ExportWorld,
    StartWorker,
    download,
    exported,
    kickoff,
    poll,
    status_path,
    wait_done,
)

FILE_RESOURCES = 5
# Five resources per file, and a load check after every resource.
SLOW = {"EXPORT_FILE_MAX_RESOURCES": str(FILE_RESOURCES), "EXPORT_BATCH_ROWS": "1"}


class Pressure:
    """Interactive traffic as the limiter records it: leases in the platform-wide in-flight
    set, here 70% of the adaptive limit. Exports (whose share is 50%) wait; polls (90%)
    and downloads (100%) are still admitted."""

    def __init__(self) -> None:
        self.client = redis.Redis.from_url(settings.LIMITS_REDIS_URL)
        self.members: list[str] = []

    def __enter__(self) -> "Pressure":
        limit = float(self.client.hget(ADAPTIVE_KEY, "limit") or settings.LIMITS_ADAPTIVE_MAX)
        self.members = [f"pressure-{uuid.uuid4().hex}" for _ in range(math.ceil(limit * 0.7))]
        expires = time.time() + 300
        self.client.zadd(GLOBAL_INFLIGHT_KEY, {m: expires for m in self.members})
        return self

    def __exit__(self, *_: Any) -> None:
        self.client.zrem(GLOBAL_INFLIGHT_KEY, *self.members)


def _job(world: ExportWorld, path: str) -> ExportJob:
    with tenant_schema(world.tenant):
        return ExportJob.objects.get(pk=path.rsplit("/", 1)[1])


def _recorded(world: ExportWorld, job: ExportJob) -> list[ExportFile]:
    with tenant_schema(world.tenant):
        return list(ExportFile.objects.filter(job_id=job.pk))


def _folder(world: ExportWorld, job: ExportJob) -> Path:
    """Where the job's files are, in the session's export folder."""
    return Path(settings.EXPORT_DIR, world.tenant.schema_name, str(job.pk))


def _wait_for(condition: Callable[[], bool], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_killed_worker_leaves_whole_files_and_the_job_resumes(
    live: ExportWorld, workers: StartWorker
) -> None:
    token = live.token()
    first = workers(SLOW)
    path = status_path(kickoff(live, token, params={"_type": "Patient,Encounter"}))
    with Pressure():
        _wait_for(lambda: len(_recorded(live, _job(live, path))) >= 1)
        first.kill()  # SIGKILL, mid-export
        first.wait(timeout=15)
    job = _job(live, path)
    assert job.status == ExportStatus.RUNNING
    recorded = _recorded(live, job)
    for file in recorded:  # each recorded file is whole
        written = Path(settings.EXPORT_DIR, file.storage_name).read_bytes().splitlines()
        assert len(written) == file.count == FILE_RESOURCES
        assert all(json.loads(line)["resourceType"] == file.resource_type for line in written)
    # Nothing is served as a result while the job is unfinished.
    time.sleep(settings.EXPORT_POLL_SECONDS)
    assert poll(path, token).status_code == 202
    url = f"{path.replace('$export-status', '$export-file')}/{recorded[0].name}"
    assert download(url, token).status_code == 404

    time.sleep(settings.EXPORT_STALE_SECONDS + 0.5)
    workers(SLOW)
    assert export_reap_all.apply().get() == {live.tenant.slug: 1}
    done = wait_done(path, token)
    assert done.status_code == 200
    by_type = exported(done.json(), token)
    stored = live.stored_counts()
    assert {t: len(rs) for t, rs in by_type.items()} == {
        "Patient": stored["Patient"],
        "Encounter": stored["Encounter"],
    }
    ids = [r["id"] for rs in by_type.values() for r in rs]
    assert len(ids) == len(set(ids))  # resumed after the last file: nothing twice
    assert _job(live, path).attempts == 2


def test_cancel_mid_run_stops_the_worker_and_leaves_no_file(
    live: ExportWorld, workers: StartWorker
) -> None:
    token = live.token()
    workers(SLOW)
    path = status_path(kickoff(live, token, params={"_type": "Observation"}))
    job = _job(live, path)
    folder = _folder(live, job)
    with Pressure():
        _wait_for(lambda: len(_recorded(live, job)) >= 1)
        assert Client().delete(path, HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 202
    assert poll(path, token).status_code == 404
    time.sleep(2)  # the worker finds out at its next file at the latest
    assert _job(live, path).status == ExportStatus.CANCELLED
    assert _recorded(live, job) == []
    assert not folder.exists() or not any(folder.iterdir())


def test_a_client_revoked_mid_export_fails_it_and_cannot_download(
    live: ExportWorld, workers: StartWorker
) -> None:
    grant = live.another_client("Revoked")
    token = live.token(grant)
    workers(SLOW)
    path = status_path(kickoff(live, token, params={"_type": "Observation"}))
    job = _job(live, path)
    with Pressure():
        _wait_for(lambda: len(_recorded(live, job)) >= 1)
        name = _recorded(live, job)[0].name
        client_revoke(client=grant.client)
    url = f"{path.replace('$export-status', '$export-file')}/{name}"
    assert poll(path, token).status_code in (401, 403)
    assert download(url, token).status_code in (401, 403)
    _wait_for(lambda: _job(live, path).status == ExportStatus.FAILED)
    assert "revoked" in _job(live, path).error
    assert _recorded(live, job) == []
    folder = _folder(live, job)
    assert not folder.exists() or not any(folder.iterdir())


def test_the_worker_yields_while_interactive_traffic_holds_its_share(
    live: ExportWorld, workers: StartWorker
) -> None:
    token = live.token()
    workers(SLOW)
    path = status_path(kickoff(live, token, params={"_type": "Patient"}))
    job = _job(live, path)
    with Pressure():
        _wait_for(lambda: _job(live, path).status == ExportStatus.RUNNING)
        time.sleep(2)
        during = sum(f.count for f in _recorded(live, job))
    # Paused after every resource for as long as the budget of a file allows: at most a
    # file or so in two seconds; without the pressure, all of them.
    assert during <= 2 * FILE_RESOURCES
    assert wait_done(path, token).status_code == 200


def test_expired_exports_go_with_their_files(live: ExportWorld) -> None:
    token = live.token()
    path = status_path(kickoff(live, token, params={"_type": "Organization"}))
    assert wait_done(path, token).status_code == 200
    job = _job(live, path)
    folder = _folder(live, job)
    assert any(folder.iterdir())
    with tenant_schema(live.tenant):
        ExportJob.objects.filter(pk=job.pk).update(expires_at=timezone.now())
    assert poll(path, token).status_code == 404
    assert export_expire_all.apply().get()[live.tenant.slug] >= 1
    assert not any(folder.iterdir())
    with tenant_schema(live.tenant):
        assert not ExportJob.objects.filter(pk=job.pk).exists()
    assert os.path.isdir(settings.EXPORT_DIR)


def test_a_queued_job_whose_message_was_lost_is_sent_again(
    live: ExportWorld, workers: StartWorker
) -> None:
    """A broker that was down at kick-off (the kick-off still answers 202), or lost the
    message: the job waits queued in the database until the reaper sends it again."""
    token = live.token()
    path = status_path(kickoff(live, token, params={"_type": "Organization"}))
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    # The export queue's lists (kombu keeps one per priority step): no worker takes them.
    lost = broker.delete(EXPORT_QUEUE, *broker.scan_iter(match=f"{EXPORT_QUEUE}\x06\x16*"))
    assert lost >= 1
    workers({})
    job = _job(live, path)
    with tenant_schema(live.tenant):
        ExportJob.objects.filter(pk=job.pk).update(
            heartbeat_at=timezone.now() - timedelta(seconds=settings.EXPORT_STALE_SECONDS + 1)
        )
    assert export_reap_all.apply().get() == {live.tenant.slug: 1}
    assert wait_done(path, token).status_code == 200
    assert _job(live, path).attempts == 1
