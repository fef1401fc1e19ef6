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

# Exports: a folder of the session's own, shared with the worker it starts (which inherits
# the environment); polls due every second; a worker that stops for 3 s is taken as dead.
import os  # noqa: E402
import tempfile  # noqa: E402

EXPORT_DIR = os.environ.setdefault("EXPORT_DIR", tempfile.mkdtemp(prefix="fp-test-exports-"))
EXPORT_POLL_SECONDS = 1
EXPORT_STALE_SECONDS = int(os.environ.get("EXPORT_STALE_SECONDS", "3"))
STORAGES["exports"] = {  # noqa: F405
    "BACKEND": "django.core.files.storage.FileSystemStorage",
    "OPTIONS": {"location": EXPORT_DIR},
}
