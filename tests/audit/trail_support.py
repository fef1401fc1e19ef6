"""Writing, sealing and tampering with a test tenant's audit trail, as the tests of
verification and archiving need it."""

from datetime import UTC, datetime
from typing import Any

from django.db import connection

from audit.models import AuditSeal, Interaction
from audit.sealing import audit_seal
from audit.services import AuditRecord, audit_write
from audit.verification import VerifyReport, audit_verify
from fhirplatform.schemas import tenant_schema
from tenants.models import Tenant

# What PostgreSQL answers a change to the trail: UPDATE and TRUNCATE are refused, and a
# DELETE of anything no archive covers.
TRAIL_REFUSES = r"append-only|only by an archive"


def events_write(tenant: Tenant, count: int) -> list[int]:
    """`count` read events in the tenant's trail, each committed; their ids."""
    ids = []
    for number in range(count):
        with tenant_schema(tenant):
            record = AuditRecord(
                recorded=datetime.now(UTC),
                interaction=Interaction.READ,
                status=200,
                request_id=f"r{number}",
                resource_type="Patient",
                resource_id=f"p{number}",
                patients=(f"p{number}",),
            )
            ids.append(audit_write(record=record, schema=tenant.schema_name))
    return ids


def trail_sealed(tenant: Tenant) -> AuditSeal | None:
    with tenant_schema(tenant):
        return audit_seal()


def trail_verified(tenant: Tenant, *, files: bool = False) -> VerifyReport:
    with tenant_schema(tenant):
        return audit_verify(schema=tenant.schema_name, files=files)


def as_superuser_without_triggers(tenant: Tenant, *statements: tuple[str, list[Any]]) -> None:
    """What only a superuser can do: write with every trigger off."""
    with tenant_schema(tenant), connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")
        for sql, params in statements:
            cursor.execute(sql, params)
