"""Advisory locks of a tenant: one writer at a time for a name, until its transaction ends."""

import hashlib

from django.db import connection

from fhirplatform.schemas import schema_current


def tenant_advisory_lock(name: str) -> None:
    """A transaction-scoped advisory lock on `name` in the current tenant.

    Advisory locks are database-wide, so the key names the tenant's schema: another
    tenant's identical name never waits on this one. The key is hashed here rather than
    by PostgreSQL so that no client text, whatever it holds, reaches the lock call.
    """
    key = f"{schema_current()}\n{name}".encode()
    number = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big", signed=True)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [number])
