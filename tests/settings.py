"""Settings for the test suite: the platform's own, with one budget widened.

The negative matrices send hundreds of refused (401/403) requests from 127.0.0.1
within seconds; the per-address refusal budget itself is tested with a narrow
override (tests/limits/test_refusals.py).
"""

from fhirplatform.settings import *  # noqa: F403

LIMITS_REFUSALS_PER_IP = "1000000/m"

# Tests never run collectstatic; the admin's files come from the apps themselves.
STATIC_ROOT = None
WHITENOISE_USE_FINDERS = True
