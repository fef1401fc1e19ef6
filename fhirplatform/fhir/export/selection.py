"""Which rows an export job writes, and how the worker reads them.

A job's rows of a type are its current resources as of its transaction time, narrowed by
`_since`, the patients (Patient and Group exports: their compartments) and `_typeFilter`,
without what the caller's consent decision denies (left out in SQL, as a search leaves it
out). They are read in `(last_updated, id)` order, the order of the store's
`(resource_type, last_updated, id)` index, one file at a time, through a server-side cursor.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from django.conf import settings
from django.db import connection
from django.db.models import BooleanField, Q, QuerySet
from django.db.models.expressions import RawSQL
from django.db.models.fields import TextField
from django.db.models.functions import Cast
from django.utils.dateparse import parse_datetime

from consent.enforcement import ConsentGuard
from fhirplatform.fhir.export.models import ExportJob, ExportLevel
from fhirplatform.fhir.models import Resource
from fhirplatform.fhir.search.keyset import with_stored_text
from fhirplatform.fhir.search.parsing import search_parse
from fhirplatform.fhir.search.selectors import search_matches
from tenants.tokens import Caller

# Where a type's next file starts: after this row, in (last_updated, pk) order; (None, 0)
# at the type's start.
Position = tuple[datetime | None, int]
START: Position = (None, 0)


@dataclass
class Selection:
    """A job's rows, as its caller may see them now."""

    job: ExportJob
    caller: Caller
    consent: ConsentGuard
    base_url: str

    def selected(self, resource_type: str) -> QuerySet[Resource]:
        """The type's rows the job exports, before consent."""
        job = self.job
        rows = Resource.objects.filter(
            resource_type=resource_type, deleted=False, last_updated__lte=job.transaction_time
        )
        if job.since is not None:
            rows = rows.filter(last_updated__gt=job.since)
        if job.level != ExportLevel.SYSTEM:
            if job.patients or job.level == ExportLevel.GROUP:
                rows = rows.filter(compartment__overlap=job.patients)
            else:
                rows = rows.exclude(compartment=[])
        if queries := job.type_filters.get(resource_type):
            rows = rows.filter(self._matching(resource_type, queries))
        return rows

    def visible(self, resource_type: str) -> QuerySet[Resource]:
        return self.consent.visible(self.selected(resource_type), resource_types=[resource_type])

    def _matching(self, resource_type: str, queries: list[str]) -> Q:
        """What any of the type's `_typeFilter` searches matches."""
        matched = Q()
        for query in queries:
            parsed = search_parse(
                resource_type=resource_type,
                params=parse_qsl(query, keep_blank_values=True),
                strict=True,
            )
            found = search_matches(
                caller=self.caller, request=parsed, base_url=self.base_url, consent=None
            )
            matched |= Q(pk__in=found.values("pk"))
        return matched


def _after(position: Position) -> RawSQL:
    """Rows after `position` in (last_updated, pk) order: one row comparison, which the
    index serves as a range (an OR of two conditions it would not)."""
    table = Resource._meta.db_table
    return RawSQL(  # noqa: S611 - the table's name is our own, the position a parameter
        f"({table}.last_updated, {table}.id) > (%s, %s)",
        position,
        output_field=BooleanField(),
    )


def file_batches(rows: Selection, resource_type: str, after: Position) -> Iterator[list[Any]]:
    """The next file's rows after `after`, in batches of (last_updated as text, pk, JSON
    text), through a server-side cursor: a batch is one fetch, with no ORM work per row.
    Runs in the caller's transaction, which the cursor lives in."""
    visible = rows.visible(resource_type)
    if after[0] is not None:
        visible = visible.filter(_after(after))
    # last_updated as PostgreSQL writes it: only a file's last row's is ever read, and a
    # datetime made for every row cost a third of the run.
    ordered = with_stored_text(visible).order_by("last_updated", "pk")
    ordered = ordered.annotate(updated_text=Cast("last_updated", TextField()))
    columns = ordered.values_list("updated_text", "pk", "content_text")  # type: ignore[misc]
    sql, params = columns[: settings.EXPORT_FILE_MAX_RESOURCES].query.sql_with_params()
    cursor = connection.chunked_cursor()
    try:
        cursor.execute(sql, params)
        while batch := cursor.fetchmany(settings.EXPORT_BATCH_ROWS):
            yield batch
    finally:
        cursor.close()


def position_of(row: Any) -> Position:
    """A row of file_batches as the position after it."""
    instant = parse_datetime(row[0])
    if instant is None:
        raise ValueError(f"not a timestamp: {row[0]!r}")
    return instant, row[1]


def types_held(resource_types: list[str]) -> frozenset[str]:
    """Those of the types the tenant holds a current resource of: one statement of index
    probes, so that a system export spends nothing on the many types a tenant never uses."""
    table = Resource._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT t FROM unnest(%s::text[]) AS t WHERE EXISTS "
            f"(SELECT 1 FROM {table} r WHERE r.resource_type = t AND NOT r.deleted)",
            [resource_types],
        )
        return frozenset(row[0] for row in cursor.fetchall())
