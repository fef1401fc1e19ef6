import logging
from datetime import datetime

from django.utils import timezone

from audit.archiving import ArchiveRefused, retention_cutoff, trail_archives
from audit.sealing import MAX_BLOCK, audit_seal
from fhirplatform.celery import app
from fhirplatform.schemas import schema_public, tenant_schema
from tenants.models import Tenant
from tenants.selectors import tenants_with_schema

logger = logging.getLogger(__name__)


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
    for tenant in tenants_with_schema():
        with tenant_schema(tenant):
            sealed[tenant.slug] = _seal_until_done()
    schema_public()
    return sealed


def _archive_until_done(tenant: Tenant | None, now: datetime, actor: str) -> int:
    """Archive what a trail's retention lets go as of `now`; the events archived. A trail
    whose oldest blocks do not verify keeps them and is logged."""
    archived = 0
    try:
        for archive in trail_archives(
            tenant=tenant, cutoff=retention_cutoff(tenant, now), actor=actor
        ):
            archived += archive.events
    except ArchiveRefused as refused:
        logger.error(
            "audit archive refused",
            extra={"tenant": tenant.slug if tenant else "public", "reason": str(refused)},
        )
    return archived


def audit_archive_due(*, now: datetime, actor: str) -> dict[str, int]:
    """Archive what every trail's retention lets go as of `now`: the events archived."""
    archived = {"public": _archive_until_done(None, now, actor)}
    for tenant in tenants_with_schema():
        archived[tenant.slug] = _archive_until_done(tenant, now, actor)
    schema_public()
    return archived


@app.task(name="audit.archive_all", ignore_result=True)
def audit_archive_all() -> dict[str, int]:
    """Archive every trail's blocks older than its retention: beat runs it daily."""
    return audit_archive_due(now=timezone.now(), actor="audit.archive_all")
