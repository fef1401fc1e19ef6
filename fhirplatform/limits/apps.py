from django.apps import AppConfig


class LimitsConfig(AppConfig):
    name = "fhirplatform.limits"
    label = "limits"
    verbose_name = "Rate limits"
