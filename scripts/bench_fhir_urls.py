"""The platform's URLs plus the benchmark's baseline: a bare Django view that returns the
same stored JSON as a FHIR read, with no token, scope, rate limit or DRF in between."""

import json

from django.http import HttpRequest, HttpResponse
from django.urls import path

from fhirplatform.fhir.models import Resource
from fhirplatform.schemas import schema_activate
from fhirplatform.urls import handler404, handler500, urlpatterns  # noqa: F401
from tenants.models import Tenant


def bare_read(
    request: HttpRequest, tenant: str, resource_type: str, logical_id: str
) -> HttpResponse:
    schema_activate(Tenant.objects.get(slug=tenant))
    content = (
        Resource.objects.filter(resource_type=resource_type, logical_id=logical_id)
        .values_list("content", flat=True)
        .first()
    )
    return HttpResponse(
        json.dumps(content, separators=(",", ":")), content_type="application/fhir+json"
    )


urlpatterns = [
    path("bench-bare/<slug:tenant>/<str:resource_type>/<str:logical_id>", bare_read),
    *urlpatterns,
]
