"""Search index writes. Called by the FHIR store inside the write's transaction.

A single write (create, update, delete) writes its index rows inside the store's one
write statement: `index_write_clauses` gives the WITH clauses that delete the old rows
and insert the new ones, each table's rows sent as one array per column. The loader's
bulk path COPYs them instead (`index_resources`).
"""

import re
from collections.abc import Iterable
from dataclasses import astuple, fields
from typing import Any

from django.db import connection, models

from fhirplatform.db.named import schema_table_named
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


def _columns(model: type[models.Model]) -> list[str]:
    """An index table's columns after resource_id and resource_type, in value order."""
    return ["param", *(f.name for f in fields(_VALUE_FOR_MODEL[model]))]


def _values(resource: Resource) -> dict[type[models.Model], list[tuple[Any, ...]]]:
    """Index rows of one resource as (param, *values) tuples, by table."""
    rows: dict[type[models.Model], list[tuple[Any, ...]]] = {}
    if resource.deleted or not resource.content:
        return rows
    for parameter, value in resource_values(
        resource_type=resource.resource_type, content=resource.content
    ):
        model = _MODEL_FOR_VALUE[type(value)]
        rows.setdefault(model, []).append((parameter.name, *astuple(value)))
    return rows


def _table(model: type[models.Model]) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def _array_type(model: type[models.Model], column: str) -> str:
    """The column's type without its length or precision, as an array: an explicit cast to
    varchar(255) would cut an over-long value silently, where the INSERT refuses it."""
    field = model._meta.get_field(column)
    if not isinstance(field, models.Field):
        raise TypeError(f"{model.__name__}.{column} is not a column")
    return re.sub(r"\(.*\)", "", str(field.db_type(connection))) + "[]"


def index_write_clauses(
    *, resource: Resource, source: str, replace: bool
) -> tuple[list[str], list[Any]]:
    """WITH clauses (and their parameters, in order) that write `resource`'s index rows
    from its current content, the row id taken from the `source` clause's `id` column.

    `replace`: the resource may have rows already (an update or delete), and they go. In
    one statement a DELETE does not see the rows an INSERT beside it adds (all clauses
    share the statement's snapshot), so only the old rows are deleted.
    """
    clauses: list[str] = []
    params: list[Any] = []
    if replace:
        for index_model in INDEX_MODEL.values():
            clauses.append(
                f"gone_{index_model._meta.db_table} AS (DELETE FROM {_table(index_model)} "
                "WHERE resource_id = %s)"
            )
            params.append(resource.pk)
    for model, rows in _values(resource).items():
        columns = _columns(model)
        arrays = ", ".join(f"%s::{_array_type(model, column)}" for column in columns)
        clauses.append(
            f"new_{model._meta.db_table} AS (INSERT INTO {_table(model)} "
            f"(resource_id, resource_type, {', '.join(columns)}) "
            f"SELECT {source}.id, %s, new_rows.* FROM {source}, unnest({arrays}) AS new_rows)"
        )
        params.append(resource.resource_type)
        params.extend(list(column) for column in zip(*rows, strict=True))
    return clauses, params


def rows_copy(*, table: str, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    """COPY rows into a table of the current schema. Building model instances and
    INSERTs cost more than the extraction itself, and the loader writes tens of thousands
    of resources at a time; the FHIR store's bulk path uses this too.

    COPY goes to psycopg's cursor, past the backend's path guard: it names its schema."""
    statement = f"COPY {schema_table_named(table)} ({', '.join(columns)}) FROM STDIN"
    with connection.cursor() as cursor, cursor.cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)


def index_remove(*, resource: Resource) -> None:
    """Drop the search index rows of a deleted resource."""
    index_remove_many(resource_ids=[resource.pk])


def index_remove_many(*, resource_ids: list[int]) -> None:
    """Drop the index rows of these resources, every table in one statement."""
    if not resource_ids:
        return
    clauses = [
        f"gone_{model._meta.db_table} AS (DELETE FROM {_table(model)} WHERE resource_id = ANY(%s))"
        for model in INDEX_MODEL.values()
    ]
    with connection.cursor() as cursor:
        cursor.execute(f"WITH {', '.join(clauses)} SELECT 1", [resource_ids] * len(clauses))


def index_resource(*, resource: Resource) -> None:
    """(Re)build the search index rows of `resource` from its current content.

    A first version (version_id 1) has no rows yet, so creates skip the delete pass;
    a deleted resource only loses its rows.
    """
    index_resources(resources=[resource])


def index_resources(*, resources: Iterable[Resource]) -> int:
    """Index many resources in one pass (the loader's path): one delete for the updated
    ones, then one COPY per table. Returns the number of index rows written."""
    batch = list(resources)
    index_remove_many(resource_ids=[r.pk for r in batch if r.version_id != 1 or r.deleted])
    pending: dict[type[models.Model], list[tuple[Any, ...]]] = {}
    for resource in batch:
        head = (resource.pk, resource.resource_type)
        for model, rows in _values(resource).items():
            pending.setdefault(model, []).extend((*head, *row) for row in rows)
    written = 0
    for model, rows in pending.items():
        rows_copy(
            table=model._meta.db_table,
            columns=["resource_id", "resource_type", *_columns(model)],
            rows=rows,
        )
        written += len(rows)
    return written
