"""Exports into an S3-compatible bucket (EXPORT_S3_BUCKET): moto's S3 server on loopback,
a worker writing to it, downloads streamed back from it through the API, and a cancel
that deletes the objects."""

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import requests
from django.test import Client

from tests.fhir.export.export_support import (
    ExportWorld,
    StartWorker,
    exported,
    kickoff,
    poll,
    status_path,
    wait_done,
)

pytestmark = pytest.mark.live

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "export-test",
    "AWS_SECRET_ACCESS_KEY": "export-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3-compatible server, on a loopback port of its own."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(url, timeout=1)
            break
        except requests.ConnectionError:
            assert server.poll() is None and time.monotonic() < deadline, "no S3 server"
            time.sleep(0.2)
    yield url
    server.terminate()
    server.wait(timeout=10)


def test_an_export_is_written_to_and_served_from_the_bucket(
    live: ExportWorld, workers: StartWorker, s3_endpoint: str, settings: Any, monkeypatch: Any
) -> None:
    bucket = f"exports-{uuid.uuid4().hex[:8]}"
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=bucket)
    options = {"bucket_name": bucket, "endpoint_url": s3_endpoint, "location": "exports"}
    settings.STORAGES = settings.STORAGES | {
        "exports": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": options}
    }
    workers(CREDENTIALS | {"EXPORT_S3_BUCKET": bucket, "EXPORT_S3_ENDPOINT_URL": s3_endpoint})
    token = live.token()
    path = status_path(kickoff(live, token, params={"_type": "Patient,Condition"}))
    done = wait_done(path, token)
    assert done.status_code == 200, done.content
    by_type = exported(done.json(), token)
    stored = live.stored_counts()
    assert {t: len(rs) for t, rs in by_type.items()} == {
        "Patient": stored["Patient"],
        "Condition": stored["Condition"],
    }
    job = path.rsplit("/", 1)[1]
    prefix = f"exports/{live.tenant.schema_name}/{job}/"
    objects = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    assert sorted(o["Key"].removeprefix(prefix) for o in objects) == [
        "Condition.001.ndjson",
        "Patient.001.ndjson",
    ]

    assert Client().delete(path, HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 202
    assert poll(path, token).status_code == 404
    assert s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("KeyCount") == 0
