"""The one place that moves the database connection between tenant schemas."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from django.db import connection

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
def tenant_schema(tenant: "Tenant") -> Iterator[None]:
    """Run a block in the tenant's schema; always back to public afterwards."""
    schema_activate(tenant)
    try:
        yield
    finally:
        schema_public()
