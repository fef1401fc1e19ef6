from django.db.models import Count

from fhirplatform.celery import tenant_task
from fhirplatform.fhir.models import Resource
from fhirplatform.schemas import schema_current


@tenant_task(name="fhir.tasks.resource_counts")
def resource_counts(*, tenant_schema: str) -> dict[str, object]:
    """Live resources per type in the task's tenant schema (for the admin and portal)."""
    rows = (
        Resource.objects.filter(deleted=False)
        .values("resource_type")
        .annotate(n=Count("id"))
        .order_by("resource_type")
    )
    return {
        "schema": schema_current(),
        "counts": {row["resource_type"]: row["n"] for row in rows},
    }
