from fhirplatform.celery import app
from tenants.services import jtis_purge_expired, tokens_purge_expired


# Registered under its first name: the beat schedule and messages already queued use it.
@app.task(name="tenants.tasks.tokens_purge_expired")
def tokens_and_jtis_purge_expired() -> dict[str, int]:
    """Expired access tokens and spent assertion ids (one beat entry purges both)."""
    return {"tokens": tokens_purge_expired(), "jtis": jtis_purge_expired()}
