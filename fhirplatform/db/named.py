"""Statements that name their schema: no search_path, so no transaction, for them.

A read of one row needs nothing but its SELECT when the SELECT says which schema's table
it reads. The backend runs statements on a `schema_named_cursor()` as they are (see
fhirplatform/db/backend/base.py); every other statement keeps its path guard.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import connection
from django.db.backends.utils import CursorWrapper
from django.db.models import Model
from django_tenants.utils import quote_schema_name

# The backend's own methods, typed once here (django-stubs knows the base wrapper only).
_backend: Any = connection


def schema_table(model: type[Model]) -> str:
    """The model's table in the connection's current schema, both quoted."""
    return schema_table_named(model._meta.db_table)


def schema_table_named(table: str) -> str:
    """A table of the connection's current schema by its name, both quoted."""
    return f"{quote_schema_name(str(_backend.schema_name))}.{connection.ops.quote_name(table)}"


@contextmanager
def schema_named_cursor() -> Iterator[CursorWrapper]:
    """A cursor for statements that name the schema of every table they touch."""
    with _backend.schema_named_cursor() as cursor:
        yield cursor
