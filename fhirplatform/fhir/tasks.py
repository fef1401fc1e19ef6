from django.db.models import Count

from fhirplatform.celery import tenant_task
from fhirplatform.fhir.models import Resource


@tenant_task(name="fhir.tasks.resource_counts")
def resource_counts(*, tenant_schema: str) -> dict[str, object]:
    """Live resources per type in the task's tenant schema (for the admin and portal)."""
    from django.db import connection

    rows = (
        Resource.objects.filter(deleted=False)
        .values("resource_type")
        .annotate(n=Count("id"))
        .order_by("resource_type")
    )
    return {"schema": connection.schema_name, "counts": {row["resource_type"]: row["n"] for row in rows}}
