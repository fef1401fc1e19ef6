"""Settings for the test suite: the platform's own, with one budget widened.

The negative matrices send hundreds of refused (401/403) requests from 127.0.0.1
within seconds; the per-address refusal budget itself is tested with a narrow
override (tests/limits/test_refusals.py).
"""

import os
import tempfile

# Exports: a folder of the session's own, shared with the workers it starts (which inherit
# the environment), set before the platform's settings read it.
if "EXPORT_DIR" not in os.environ:
    os.environ["EXPORT_DIR"] = tempfile.mkdtemp(prefix="fp-test-exports-")

from fhirplatform.settings import *  # noqa: F403

LIMITS_REFUSALS_PER_IP = "1000000/m"

# Tests never run collectstatic; the admin's files come from the apps themselves.
STATIC_ROOT = None
WHITENOISE_USE_FINDERS = True

# Polls are due every second; a worker that stops for 3 s is taken as dead.
EXPORT_POLL_SECONDS = 1
EXPORT_STALE_SECONDS = int(os.environ.get("EXPORT_STALE_SECONDS", "3"))
