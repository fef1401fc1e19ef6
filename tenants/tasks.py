from fhirplatform.celery import app
from tenants.services import tokens_purge_expired as purge


@app.task(name="tenants.tasks.tokens_purge_expired")
def tokens_purge_expired() -> int:
    return purge()
