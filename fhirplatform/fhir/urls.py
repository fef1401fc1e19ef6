from django.urls import path

from fhirplatform.fhir.smart import SmartConfigurationView

urlpatterns: list = [
    path(
        ".well-known/smart-configuration",
        SmartConfigurationView.as_view(),
        name="smart-configuration",
    ),
]
