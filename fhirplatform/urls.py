from django.contrib import admin
from django.urls import include, path

from fhirplatform import health
from fhirplatform.fhir import views as fhir_views
from fhirplatform.metrics import metrics_view

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    path("admin/", admin.site.urls),
    path("oauth/", include("tenants.urls")),
    # The base without its slash answers too: a redirect would turn a POSTed Bundle into a GET.
    path("fhir/<slug:tenant>", fhir_views.SystemView.as_view(), name="fhir-system-bare"),
    path("fhir/<slug:tenant>/", include("fhirplatform.fhir.urls")),
]

admin.site.site_header = "fhirplatform operations"
admin.site.site_title = "fhirplatform"

handler400 = "fhirplatform.fhir.http.handler400"
handler404 = "fhirplatform.fhir.http.handler404"
handler500 = "fhirplatform.fhir.http.handler500"
