"""Search index writes. Called by the FHIR store inside the write's transaction."""

from collections.abc import Iterable
from dataclasses import astuple, fields
from typing import Any

from django.db import connection, models

from fhirplatform.fhir.models import Resource
from fhirplatform.fhir.search.extract import resource_values
from fhirplatform.fhir.search.models import (
    INDEX_MODEL,
    DateIndex,
    NumberIndex,
    QuantityIndex,
    ReferenceIndex,
    StringIndex,
    TokenIndex,
    UriIndex,
)
from fhirplatform.fhir.search.values import (
    DateValue,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    StringValue,
    TokenValue,
    UriValue,
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
_VALUE_FOR_MODEL = {model: value for value, model in _MODEL_FOR_VALUE.items()}


def _rows(resource: Resource) -> dict[type[models.Model], list[tuple[Any, ...]]]:
    """Index rows of one resource as plain tuples in each table's COPY column order."""
    rows: dict[type[models.Model], list[tuple[Any, ...]]] = {}
    if resource.deleted or not resource.content:
        return rows
    head = (resource.pk, resource.resource_type)
    for parameter, value in resource_values(
        resource_type=resource.resource_type, content=resource.content
    ):
        model = _MODEL_FOR_VALUE[type(value)]
        rows.setdefault(model, []).append((*head, parameter.name, *astuple(value)))
    return rows


def rows_copy(*, table: str, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    """COPY rows into a table of the current schema. Building model instances and
    INSERTs cost more than the extraction itself, and the loader writes tens of thousands
    of resources at a time; the FHIR store's bulk path uses this too."""
    statement = f"COPY {connection.ops.quote_name(table)} ({', '.join(columns)}) FROM STDIN"
    with connection.cursor() as cursor, cursor.cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)


def _copy(model: type[models.Model], rows: list[tuple[Any, ...]]) -> None:
    value_fields = [f.name for f in fields(_VALUE_FOR_MODEL[model])]
    columns = ["resource_id", "resource_type", "param", *value_fields]
    rows_copy(table=model._meta.db_table, columns=columns, rows=rows)


def index_remove(*, resource: Resource) -> None:
    """Drop the search index rows of a deleted resource."""
    index_remove_many(resource_ids=[resource.pk])


def index_remove_many(*, resource_ids: list[int]) -> None:
    if not resource_ids:
        return
    for model in INDEX_MODEL.values():
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
    pending: dict[type[models.Model], list[tuple[Any, ...]]] = {}
    for resource in batch:
        for model, rows in _rows(resource).items():
            pending.setdefault(model, []).extend(rows)
    written = 0
    for model, rows in pending.items():
        _copy(model, rows)
        written += len(rows)
    return written
