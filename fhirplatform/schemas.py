"""The one place that moves the database connection between tenant schemas.

Choosing a schema changes no server state: the backend (fhirplatform/db/backend) sets the
search_path with `SET LOCAL` inside the transaction that uses it, so a pooled server
connection never carries one tenant's path into another client's transaction. Tenant
work therefore runs in a transaction: `tenant_schema()` opens one.
"""

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from django.db import connection, transaction

if TYPE_CHECKING:
    from tenants.models import Tenant

# django-tenants' backend adds these methods; typed here once instead of at every call.
_tenant_connection: Any = connection


def schema_activate(tenant: "Tenant") -> None:
    _tenant_connection.set_tenant(tenant)


def schema_public() -> None:
    _tenant_connection.set_schema_to_public()


def schema_current() -> str:
    return str(_tenant_connection.schema_name)


@contextmanager
def tenant_schema(tenant: "Tenant", *, atomic: bool = True) -> Iterator[None]:
    """Run a block in the tenant's schema, as one transaction; back to public afterwards.

    `atomic=False`: the block opens no transaction of its own, because its caller holds
    one (the FHIR pipeline's re-runnable one), runs one statement that names its schema
    (a FHIR read, fhirplatform/db/named.py), or commits step by step (a bulk load: each
    `transaction.atomic()` inside is its own transaction in the schema, and a statement
    outside any runs in a transaction of its own).
    """
    with transaction.atomic() if atomic else nullcontext():
        schema_activate(tenant)
        try:
            yield
        finally:
            schema_public()


@contextmanager
def tenant_or_public_schema(tenant: "Tenant | None") -> Iterator[str]:
    """In the tenant's schema as one transaction, or in public for None (each audit trail
    lives in one of them); yields the schema's name."""
    if tenant is None:
        schema_public()
        yield "public"
        return
    with tenant_schema(tenant):
        yield tenant.schema_name
