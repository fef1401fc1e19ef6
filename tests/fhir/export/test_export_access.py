"""Who may poll, download and cancel an export: its own client, every time checked again.
Another tenant's or client's token gets the 404 a missing job gets; a revoked client's
token is refused; scopes narrowed below the exported types are refused. And every
kick-off, status, download and cancel leaves an audit event."""

import uuid

from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from audit.models import AuditEvent, Interaction
from fhirplatform.schemas import tenant_schema
from tenants.services import client_revoke
from tests.conftest import Cast
from tests.fhir.export.export_support import (
    ExportWorld,
    download,
    kickoff,
    poll,
    status_path,
    wait_done,
)


def _finished(world: ExportWorld, token: str) -> tuple[str, dict]:  # type: ignore[type-arg]
    kicked = kickoff(world, token, params={"_type": "Patient"})
    path = status_path(kicked)
    done = wait_done(path, token)
    assert done.status_code == 200
    return path, done.json()


def _other_tenant_path(path: str, cast: Cast) -> str:
    """The same job's URL under another tenant's base."""
    job = path.rsplit("/", 1)[1]
    return f"/fhir/{cast.tenant_b.slug}/$export-status/{job}"


def test_another_tenants_token_gets_the_missing_jobs_404(live: ExportWorld, cast: Cast) -> None:
    token = live.token()
    path, manifest = _finished(live, token)
    other = cast.client_b.token()
    missing = poll(f"/fhir/{live.tenant.slug}/$export-status/{uuid.uuid4()}", token)
    assert missing.status_code == 404
    for attempt in (
        poll(path, other),  # another tenant's token on this tenant's URL
        poll(_other_tenant_path(path, cast), other),  # on its own tenant's URL
        download(manifest["output"][0]["url"], other),
    ):
        assert attempt.status_code == 404
        assert attempt.json() == missing.json()
    cancel = Client().delete(path, HTTP_AUTHORIZATION=f"Bearer {other}")
    assert cancel.status_code == 404
    assert poll(path, token).status_code == 200  # still there for its own client


def test_another_client_of_the_tenant_gets_the_404(live: ExportWorld) -> None:
    path, manifest = _finished(live, live.token())
    token = live.token(live.another_client("Stranger"))
    assert poll(path, token).status_code == 404
    assert download(manifest["output"][0]["url"], token).status_code == 404


def test_narrowed_scopes_cannot_poll_or_download(live: ExportWorld) -> None:
    token = live.token()
    path, manifest = _finished(live, token)
    narrow = live.token(scopes="system/Observation.rs")
    assert poll(path, narrow).status_code == 403
    assert download(manifest["output"][0]["url"], narrow).status_code == 403


def test_a_revoked_client_cannot_download(live: ExportWorld) -> None:
    grant = live.another_client("Revoked")
    token = live.token(grant)
    path, manifest = _finished(live, token)
    client_revoke(client=grant.client)
    assert poll(path, token).status_code in (401, 403)
    assert download(manifest["output"][0]["url"], token).status_code in (401, 403)


def test_polling_sooner_than_retry_after_is_throttled(live: ExportWorld) -> None:
    # An export of many types runs for a while; the first poll answers 202.
    token = live.token()
    path = status_path(kickoff(live, token))
    first = poll(path, token)
    if first.status_code == 202:
        assert int(first["Retry-After"]) >= 1
        assert first["X-Progress"]
        early = poll(path, token)
        if early.status_code != 200:  # it may finish in between
            assert early.status_code == 429
            assert "Retry-After" in early
            coding = early.json()["issue"][0]["details"]["coding"]
            assert [c["code"] for c in coding] == ["export-poll-early"]
    assert wait_done(path, token).status_code == 200


def test_cancel_removes_the_job_and_its_files(live: ExportWorld) -> None:
    token = live.token()
    path, manifest = _finished(live, token)
    url = manifest["output"][0]["url"]
    cancel = Client().delete(path, HTTP_AUTHORIZATION=f"Bearer {token}")
    assert cancel.status_code == 202
    assert poll(path, token).status_code == 404
    assert download(url, token).status_code == 404
    assert Client().delete(path, HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 404


def test_cancel_of_a_queued_job(live: ExportWorld) -> None:
    token = live.token()
    path = status_path(kickoff(live, token))
    assert Client().delete(path, HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 202
    assert poll(path, token).status_code == 404


def test_kickoff_status_download_and_cancel_are_audited(live: ExportWorld) -> None:
    token = live.token()
    path, manifest = _finished(live, token)
    download(manifest["output"][0]["url"], token)
    Client().delete(path, HTTP_AUTHORIZATION=f"Bearer {token}")
    job = path.rsplit("/", 1)[1]
    with tenant_schema(live.tenant):
        events = AuditEvent.objects.filter(
            interaction=Interaction.EXPORT, client_id=live.reader.client.client_id
        )
        queries = list(events.values_list("query", "status"))
    assert any(q.endswith("$export?_type=Patient") and s == 202 for q, s in queries)
    assert any(q.endswith(f"$export-status/{job}") and s == 200 for q, s in queries)
    assert any(f"$export-file/{job}/" in q and s == 200 for q, s in queries)
    assert any(q.endswith(f"$export-status/{job}") and s == 202 for q, s in queries)


def test_a_poll_and_a_download_read_the_job_once(live: ExportWorld) -> None:
    """The scope step reads the job (its types decide the scopes needed); the handler
    answers from that read."""
    token = live.token()
    path, manifest = _finished(live, token)
    for call in (lambda: poll(path, token), lambda: download(manifest["output"][0]["url"], token)):
        with CaptureQueriesContext(connection) as queries:
            assert call().status_code == 200
        job_reads = [q["sql"] for q in queries if 'FROM "fhir_exportjob"' in q["sql"]]
        assert len(job_reads) == 1, job_reads
