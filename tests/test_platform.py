"""Cross-cutting platform pieces: probes, request ids, JSON logs, metrics, tenant tasks."""

import json
import logging
import uuid
from collections import Counter

import pytest
from celery.exceptions import TimeoutError as CeleryTimeout
from django.db import connection
from django.test import Client
from django.utils import timezone

from fhirplatform.celery import TenantMissing, app
from fhirplatform.fhir.models import Resource
from fhirplatform.fhir.tasks import resource_counts
from fhirplatform.health import WORKERS
from fhirplatform.schemas import schema_activate, schema_public, tenant_schema
from tenants.models import Tenant

db = pytest.mark.django_db


def test_healthz():
    response = Client().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@db
def test_readyz_checks_postgres_redis_every_schemas_migrations_and_workers(
    cast, celery_worker_process
):
    WORKERS.forget()
    response = Client().get("/readyz")
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ready"
    assert body["checks"]["postgres"]["ok"] and body["checks"]["redis"]["ok"]
    assert body["checks"]["migrations"]["tenants"] == Tenant.objects.count()
    assert body["checks"]["workers"]["ok"] and body["checks"]["workers"]["workers"]


@db
@pytest.mark.parametrize("app_label", ["fhir", "fhir_search"])
def test_readyz_reports_a_tenant_schema_behind_on_migrations(cast, app_label):
    with connection.cursor() as cursor:
        cursor.execute(
            f'DELETE FROM "{cast.tenant_b.schema_name}".django_migrations WHERE app = %s',
            [app_label],
        )
    response = Client().get("/readyz")
    assert response.status_code == 503
    assert cast.tenant_b.schema_name in response.json()["checks"]["migrations"]["error"]


@db
def test_sane_request_id_is_echoed_and_insane_one_replaced():
    browser = Client()
    assert (
        browser.get("/healthz", HTTP_X_REQUEST_ID="req-12345678")["X-Request-ID"] == "req-12345678"
    )
    minted = browser.get("/healthz", HTTP_X_REQUEST_ID="bad id\r\n<script>")["X-Request-ID"]
    assert len(minted) == 32 and minted.isalnum()
    assert len(browser.get("/healthz")["X-Request-ID"]) == 32


@db
def test_every_log_line_is_json_with_the_request_id(caplog):
    handler = logging.getLogger().handlers[0]
    with caplog.at_level(logging.INFO, logger="fhirplatform.request"):
        Client().get("/healthz", HTTP_X_REQUEST_ID="trace-abcdef12")
    record = next(r for r in caplog.records if r.name == "fhirplatform.request")
    for log_filter in handler.filters:
        log_filter.filter(record)  # type: ignore[union-attr]
    line = json.loads(handler.format(record))
    assert line["request_id"] == "trace-abcdef12"
    assert line["status"] == 200 and line["path"] == "/healthz"


@db
def test_a_fhir_requests_log_line_names_its_tenant_and_client(cast, caplog):
    handler = logging.getLogger().handlers[0]
    with caplog.at_level(logging.INFO, logger="fhirplatform.request"):
        Client().get(
            "/fhir/provider-a/Patient?_id=nobody",
            HTTP_AUTHORIZATION=f"Bearer {cast.client_a.token()}",
            HTTP_X_REQUEST_ID="trace-tenant-0001",
        )
    record = next(r for r in caplog.records if r.name == "fhirplatform.request")
    for log_filter in handler.filters:
        log_filter.filter(record)  # type: ignore[union-attr]
    line = json.loads(handler.format(record))
    assert (line["request_id"], line["tenant"], line["client"]) == (
        "trace-tenant-0001",
        cast.tenant_a.slug,
        cast.client_a.client.client_id,
    )
    assert "?" not in line["path"]  # search values (PHI) stay out of the logs


@db
def test_unknown_url_gets_an_operation_outcome():
    response = Client().get("/no/such/page")
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"


@db
def test_metrics_are_prometheus_text_for_loopback_only():
    browser = Client()
    browser.get("/healthz")
    response = browser.get("/metrics", REMOTE_ADDR="127.0.0.1")
    assert response.status_code == 200
    assert b"fhirplatform_http_requests_total" in response.content
    assert browser.get("/metrics", REMOTE_ADDR="203.0.113.9").status_code == 404


@db
def test_tenant_task_without_tenant_fails_closed():
    with pytest.raises(TypeError):
        resource_counts.delay()  # refused before it is even enqueued
    with pytest.raises(TenantMissing):
        resource_counts.apply(kwargs={}).get()
    with pytest.raises(TenantMissing):
        resource_counts.apply(kwargs={"tenant_schema": "t_nobody"}).get()


def _live_counts(tenant: Tenant) -> dict[str, int]:
    with tenant_schema(tenant):
        rows = Resource.objects.filter(deleted=False).values_list("resource_type", flat=True)
        return dict(Counter(rows))


@pytest.mark.usefixtures("committed")
def test_task_enqueued_for_tenant_a_runs_in_a_schema_on_a_real_worker(cast, celery_worker_process):
    a, b = cast.tenant_a, cast.tenant_b
    probe = "celery-probe-" + uuid.uuid4().hex[:8]
    schema_activate(a)
    Resource.objects.create(
        resource_type="Basic",
        logical_id=probe,
        version_id=1,
        last_updated=timezone.now(),
        content={"resourceType": "Basic", "id": probe},
    )
    schema_public()
    try:
        # What each schema holds now, whatever other tests committed there (the probe
        # in A): the worker must report exactly that, from inside that schema.
        expected = {tenant.schema_name: _live_counts(tenant) for tenant in (a, b)}
        results = {
            tenant.schema_name: resource_counts.delay(tenant_schema=tenant.schema_name).get(
                timeout=60
            )
            for tenant in (a, b)
        }
    except CeleryTimeout:
        pytest.fail("the Celery worker did not answer")
    finally:
        schema_activate(a)
        Resource.objects.filter(logical_id=probe).delete()
        schema_public()
    for schema, result in results.items():
        assert result == {"schema": schema, "counts": expected[schema]}


@pytest.mark.usefixtures("committed")
def test_worker_refuses_a_task_without_tenant(cast, celery_worker_process):
    with pytest.raises(TenantMissing):
        # Sent by name, as another producer would, so the worker itself must refuse it.
        app.send_task("fhir.tasks.resource_counts", kwargs={}).get(timeout=60)
