from django.apps import AppConfig


class FhirConfig(AppConfig):
    name = "fhirplatform.fhir"
    label = "fhir"
    verbose_name = "FHIR store"
