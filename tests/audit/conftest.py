import uuid
from collections.abc import Iterator

import pytest

from fhirplatform.schemas import schema_public
from tenants.models import Tenant
from tenants.services import tenant_create


@pytest.fixture
def tenant(committed: None) -> Iterator[Tenant]:
    """A tenant of the test's own: what a test seals, archives or tampers with stays
    (committed, as sealing takes only events of ended transactions)."""
    made = tenant_create(slug=f"audit-{uuid.uuid4().hex[:8]}", name="Audit")
    yield made
    schema_public()
