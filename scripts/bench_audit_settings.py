"""Server settings for scripts/bench_audit.py only: the platform without its audit writes,
the baseline the audited platform is measured against. Never used by the product (the
audit app refuses AUDIT_DISABLED_FOR_BENCHMARK under any other settings module)."""

from fhirplatform.settings import *  # noqa: F403

AUDIT_DISABLED_FOR_BENCHMARK = True
