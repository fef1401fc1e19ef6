import os

from django.apps import AppConfig
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

BENCHMARK_SETTINGS = "scripts.bench_audit_settings"


class AuditConfig(AppConfig):
    name = "audit"
    label = "audit"
    verbose_name = "Audit trail"

    def ready(self) -> None:
        # An unaudited server exists only to be measured against the audited one.
        module = os.environ.get("DJANGO_SETTINGS_MODULE", "")
        if settings.AUDIT_DISABLED_FOR_BENCHMARK and module != BENCHMARK_SETTINGS:
            raise ImproperlyConfigured(
                f"AUDIT_DISABLED_FOR_BENCHMARK is for {BENCHMARK_SETTINGS} only"
            )
