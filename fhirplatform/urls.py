from django.contrib import admin
from django.urls import include, path

from fhirplatform import health

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("oauth/", include("tenants.urls")),
    path("fhir/<slug:tenant>/", include("fhirplatform.fhir.urls")),
]

handler404 = "fhirplatform.fhir.http.handler404"
handler500 = "fhirplatform.fhir.http.handler500"
