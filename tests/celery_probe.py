"""A tenant task for the envelope tests: it writes a marker into its schema and reports
the context it ran with, so a test can tell exactly whether (and where) it ran.

Loaded only by the test worker (`--include tests.celery_probe`, tests/conftest.py).
"""

from django.utils import timezone

from fhirplatform.celery import tenant_task
from fhirplatform.context import current_context
from fhirplatform.fhir.models import Resource
from fhirplatform.schemas import schema_current


@tenant_task(name="tests.celery_probe.marker_write")
def marker_write(*, tenant_schema: str, marker: str) -> dict[str, str]:
    Resource.objects.create(
        resource_type="Basic",
        logical_id=marker,
        version_id=1,
        last_updated=timezone.now(),
        content={"resourceType": "Basic", "id": marker},
    )
    context = current_context()
    return {
        "schema": schema_current(),
        "request_id": context.request_id if context else "",
        "tenant": context.tenant if context else "",
        "client": context.client if context else "",
    }
