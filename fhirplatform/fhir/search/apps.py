from django.apps import AppConfig


class SearchConfig(AppConfig):
    name = "fhirplatform.fhir.search"
    label = "fhir_search"
    verbose_name = "FHIR search index"
