from audit.sealing import MAX_BLOCK, audit_seal
from fhirplatform.celery import app
from fhirplatform.schemas import schema_public, tenant_schema
from tenants.models import Tenant


def _seal_until_done() -> int:
    """Seal the current schema's backlog block by block; the events sealed."""
    sealed = 0
    while (seal := audit_seal()) is not None:
        sealed += seal.count
        if seal.count < MAX_BLOCK:
            break
    return sealed


@app.task(name="audit.seal_all", ignore_result=True)
def audit_seal_all() -> dict[str, int]:
    """Seal every trail (public, then each tenant's): beat runs it every
    AUDIT_SEAL_SECONDS, and running it twice at once is safe (one sealer per schema)."""
    schema_public()
    sealed = {"public": _seal_until_done()}
    for tenant in Tenant.objects.exclude(schema_name="public").order_by("slug"):
        with tenant_schema(tenant):
            sealed[tenant.slug] = _seal_until_done()
    schema_public()
    return sealed
