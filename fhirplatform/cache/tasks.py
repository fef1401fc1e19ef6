from fhirplatform.cache.purge import cache_purge_dead
from fhirplatform.celery import tenant_task


@tenant_task(name="cache.purge", ignore_result=True)
def cache_purge(*, tenant_schema: str) -> int:
    """Delete the tenant's dead cache entries (enqueued by generations_changed; safe to run
    twice). Correctness never waits on it: dead entries are unreachable already."""
    return cache_purge_dead(tenant_schema=tenant_schema)
