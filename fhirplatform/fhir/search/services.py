"""Search index writes. Called by the FHIR store inside the write's transaction."""

from collections.abc import Iterable
from typing import Any

from django.db import models

from fhirplatform.fhir.models import Resource
from fhirplatform.fhir.search.extract import (
    DateValue,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    StringValue,
    TokenValue,
    UriValue,
    resource_values,
)
from fhirplatform.fhir.search.models import (
    DateIndex,
    NumberIndex,
    QuantityIndex,
    ReferenceIndex,
    StringIndex,
    TokenIndex,
    UriIndex,
)

INDEX_MODELS: tuple[type[models.Model], ...] = (
    TokenIndex,
    StringIndex,
    DateIndex,
    ReferenceIndex,
    NumberIndex,
    QuantityIndex,
    UriIndex,
)
_MODEL_FOR_VALUE: dict[type, type[models.Model]] = {
    TokenValue: TokenIndex,
    StringValue: StringIndex,
    DateValue: DateIndex,
    ReferenceValue: ReferenceIndex,
    NumberValue: NumberIndex,
    QuantityValue: QuantityIndex,
    UriValue: UriIndex,
}
BULK_BATCH = 2000


def _rows(resource: Resource) -> dict[type[models.Model], list[models.Model]]:
    rows: dict[type[models.Model], list[models.Model]] = {}
    if resource.deleted or not resource.content:
        return rows
    for parameter, value in resource_values(
        resource_type=resource.resource_type, content=resource.content
    ):
        model = _MODEL_FOR_VALUE[type(value)]
        fields: dict[str, Any] = value.__dict__
        rows.setdefault(model, []).append(
            model(
                resource=resource,
                resource_type=resource.resource_type,
                param=parameter.name,
                **fields,
            )
        )
    return rows


def index_remove(*, resource: Resource) -> None:
    """Drop the search index rows of a deleted resource."""
    index_remove_many(resource_ids=[resource.pk])


def index_remove_many(*, resource_ids: list[int]) -> None:
    if not resource_ids:
        return
    for model in INDEX_MODELS:
        model._default_manager.filter(resource_id__in=resource_ids).delete()


def index_resource(*, resource: Resource) -> None:
    """(Re)build the search index rows of `resource` from its current content.

    A first version (version_id 1) has no rows yet, so creates skip the delete pass;
    a deleted resource only loses its rows.
    """
    index_resources(resources=[resource])


def index_resources(*, resources: Iterable[Resource]) -> int:
    """Index many resources in one pass (the loader's path): one delete per table for
    the updated ones, then bulk inserts. Returns the number of index rows written."""
    batch = list(resources)
    index_remove_many(resource_ids=[r.pk for r in batch if r.version_id != 1 or r.deleted])
    pending: dict[type[models.Model], list[models.Model]] = {}
    for resource in batch:
        for model, rows in _rows(resource).items():
            pending.setdefault(model, []).extend(rows)
    written = 0
    for model, rows in pending.items():
        model._default_manager.bulk_create(rows, batch_size=BULK_BATCH)
        written += len(rows)
    return written
