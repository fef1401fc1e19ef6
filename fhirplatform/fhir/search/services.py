"""Search index writes. Called by the FHIR store inside the write's transaction."""

from fhirplatform.fhir.models import Resource


def index_resource(*, resource: Resource) -> None:
    """(Re)build the search index rows of `resource` from its current content."""


def index_remove(*, resource: Resource) -> None:
    """Drop the search index rows of a deleted resource."""
