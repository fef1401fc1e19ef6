"""Context that travels: every Celery message carries a signed envelope (tenant schema,
client, request id), and a REAL worker over Redis refuses a message without one, or with
its tenant, task or arguments altered — such a message never touches a tenant schema.
"""

import uuid
from collections.abc import Iterator

import pytest
from celery.exceptions import TimeoutError as CeleryTimeout
from django.core import signing

from fhirplatform.celery import EnvelopeRefused, app
from fhirplatform.context import context_begin, context_end, context_update
from fhirplatform.fhir.models import Resource
from fhirplatform.schemas import tenant_schema
from fhirplatform.task_envelope import ENVELOPE_HEADER, envelope_seal
from tenants.models import Tenant
from tests.celery_probe import marker_write

pytestmark = pytest.mark.usefixtures("committed", "celery_worker_process")

PROBE = "tests.celery_probe.marker_write"


@pytest.fixture
def marker(cast) -> Iterator[str]:
    value = "envelope-" + uuid.uuid4().hex[:12]
    yield value
    for tenant in (cast.tenant_a, cast.tenant_b):
        with tenant_schema(tenant):
            Resource.objects.filter(logical_id=value).delete()


def _written_in(tenant: Tenant, marker: str) -> bool:
    with tenant_schema(tenant):
        return Resource.objects.filter(logical_id=marker).exists()


def _result(async_result):
    try:
        return async_result.get(timeout=60)
    except CeleryTimeout:
        pytest.fail("the Celery worker did not answer")


def _refused(async_result) -> str:
    with pytest.raises(EnvelopeRefused) as refused:
        _result(async_result)
    return str(refused.value)


def test_a_task_sent_normally_runs_in_its_tenant_with_the_requests_context(cast, marker):
    context_begin(request_id="req-envelope-0001")
    context_update(tenant=cast.tenant_a.slug, client=cast.client_a.client.client_id)
    try:
        sent = marker_write.delay(tenant_schema=cast.tenant_a.schema_name, marker=marker)
    finally:
        context_end()
    assert _result(sent) == {
        "schema": cast.tenant_a.schema_name,
        "request_id": "req-envelope-0001",
        "tenant": cast.tenant_a.slug,
        "client": cast.client_a.client.client_id,
    }
    assert _written_in(cast.tenant_a, marker)
    assert not _written_in(cast.tenant_b, marker)


def test_a_message_without_an_envelope_is_refused_and_never_runs(cast, marker):
    raw = app.send_task(
        PROBE, kwargs={"tenant_schema": cast.tenant_b.schema_name, "marker": marker}
    )
    assert "no signed context envelope" in _refused(raw)
    assert not _written_in(cast.tenant_b, marker)


def test_an_envelope_moved_onto_another_tenant_is_refused(cast, marker):
    """A genuine envelope sealed for tenant A, on a message that names tenant B."""
    sealed_for_a = envelope_seal(
        task_name=PROBE,
        args=(),
        kwargs={"tenant_schema": cast.tenant_a.schema_name, "marker": marker},
    )
    moved = app.send_task(
        PROBE,
        kwargs={"tenant_schema": cast.tenant_b.schema_name, "marker": marker},
        headers={ENVELOPE_HEADER: sealed_for_a},
    )
    assert "tenant" in _refused(moved)
    assert not _written_in(cast.tenant_a, marker)
    assert not _written_in(cast.tenant_b, marker)


def test_altered_arguments_or_task_are_refused(cast, marker):
    schema = cast.tenant_a.schema_name
    sealed = envelope_seal(
        task_name=PROBE, args=(), kwargs={"tenant_schema": schema, "marker": "something-else"}
    )
    altered = app.send_task(
        PROBE, kwargs={"tenant_schema": schema, "marker": marker}, headers={ENVELOPE_HEADER: sealed}
    )
    assert "arguments" in _refused(altered)
    other_task = envelope_seal(
        task_name="fhir.tasks.resource_counts",
        args=(),
        kwargs={"tenant_schema": schema, "marker": marker},
    )
    renamed = app.send_task(
        PROBE,
        kwargs={"tenant_schema": schema, "marker": marker},
        headers={ENVELOPE_HEADER: other_task},
    )
    assert "task" in _refused(renamed)
    assert not _written_in(cast.tenant_a, marker)


def test_an_envelope_signed_with_another_key_is_refused(cast, marker):
    kwargs = {"tenant_schema": cast.tenant_b.schema_name, "marker": marker}
    genuine = envelope_seal(task_name=PROBE, args=(), kwargs=kwargs)
    payload = signing.loads(genuine, salt="fhirplatform.celery.envelope")
    forged = signing.dumps(
        payload, key="not-the-secret-key-" + "x" * 40, salt="fhirplatform.celery.envelope"
    )
    sent = app.send_task(PROBE, kwargs=kwargs, headers={ENVELOPE_HEADER: forged})
    assert "signature" in _refused(sent)
    tampered = genuine[:-3] + ("AAA" if not genuine.endswith("AAA") else "BBB")
    sent = app.send_task(PROBE, kwargs=kwargs, headers={ENVELOPE_HEADER: tampered})
    assert "signature" in _refused(sent)
    assert not _written_in(cast.tenant_b, marker)


def test_a_platform_task_without_a_tenant_is_sealed_too(cast):
    """Not only tenant tasks: the purge task, sent raw, is refused; sent normally, it runs."""
    from tenants.tasks import tokens_and_jtis_purge_expired

    raw = app.send_task("tenants.tasks.tokens_purge_expired")
    _refused(raw)
    assert set(_result(tokens_and_jtis_purge_expired.delay())) == {"tokens", "jtis"}
