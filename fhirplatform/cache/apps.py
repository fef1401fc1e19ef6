from django.apps import AppConfig


class CacheConfig(AppConfig):
    name = "fhirplatform.cache"
    label = "cache"
    verbose_name = "Cache and consent"

    def ready(self) -> None:
        # The purge task registers with the Celery app wherever Django starts (web and
        # worker), whatever the app's autodiscovery list says.
        from fhirplatform.cache import tasks  # noqa: F401
        from fhirplatform.cache.metrics import tenant_collector_register

        tenant_collector_register()
