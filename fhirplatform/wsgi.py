import os
from importlib import import_module

from django.conf import settings
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fhirplatform.settings")
django_application = get_wsgi_application()
# The URL conf imports every view and the FHIR model classes (seconds): at load, not
# during a worker's first requests.
import_module(settings.ROOT_URLCONF)

# Imported once Django is set up: the gate reads the URL conf, tokens and the limiter.
from fhirplatform.fhir.gate import RefusalGate  # noqa: E402

# A flood past a rate limit is refused before Django runs (fhirplatform/fhir/gate.py).
application = RefusalGate(django_application)
