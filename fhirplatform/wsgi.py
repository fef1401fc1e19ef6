import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fhirplatform.settings")
django_application = get_wsgi_application()

# Imported once Django is set up: the gate reads the URL conf, tokens and the limiter.
from fhirplatform.fhir.gate import RefusalGate  # noqa: E402

# A flood past a rate limit is refused before Django runs (fhirplatform/fhir/gate.py).
application = RefusalGate(django_application)
