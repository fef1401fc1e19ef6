"""Server settings for scripts/bench_fhir.py only: the platform's settings plus one bare
Django view used as the baseline. Never used by the product."""

from fhirplatform.settings import *  # noqa: F403

ROOT_URLCONF = "scripts.bench_fhir_urls"
