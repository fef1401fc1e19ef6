"""The semantic cache of one search: what the expensive part of a search found, kept
apart from how the answer is shown.

The response cache answers only the identical request. The same search asked with another
page size, `_summary`, `_elements` or `_include` runs the whole search again: the criteria
(EXISTS filters on the index tables), the consent exclusion, the sort and the count. This
tier keeps what those find, keyed by the normalised query (the filters in one spelling, the
sort), so that every variant of the search shares it:

- the total: `_summary=count`, `_count=0` and `_total=accurate` read one count;
- a page's rows by id (their sort keys and ids, and whether rows lie beyond), from its
  position and size: the rows are then read by id in one statement, never searched;
- the `_include`/`_revinclude` resolution of a page: the ids of what it brings in.

Entries live in Redis beside the response cache's (fhirplatform/fhir/caching.py,
SearchCache): named by tenant, client, scopes and purpose like them, filled at the exit
only after the whole search answered 200, under the same generations (POLICY, CONSENT,
each type touched) and ttl. Without a SearchCache (Redis down, a search that is not
cacheable, the platform's own matching) everything is computed.
"""

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fhirplatform.fhir.models import Resource
from fhirplatform.fhir.search.keyset import (
    Located,
    Position,
    located_decode,
    located_encode,
    position_parts,
    with_stored_text,
)
from fhirplatform.fhir.search.parsing import SearchRequest

if TYPE_CHECKING:
    from fhirplatform.fhir.caching import SearchCache


def query_normalised(request: SearchRequest) -> list[Any]:
    """What decides which resources a search finds and in what order, in one spelling:
    the types, the filters (sorted, their values sorted and folded) and the sort. Paging,
    `_summary`, `_elements`, `_include` and `_total` are not part of it."""
    sort = request.sort
    return [
        request.resource_types,
        request.system_level,
        sorted(request.filters),
        [sort.name, sort.descending, sort.kind],
    ]


class SearchMemo:
    """The semantic tier as one search uses it; `cache` None: nothing is remembered."""

    def __init__(self, *, cache: "SearchCache | None", request: SearchRequest) -> None:
        self.cache = cache
        self.request = request
        self.query = query_normalised(request)

    def _recall(self, parts: list[Any]) -> Any:
        if self.cache is None:
            return None
        stored = self.cache.get(parts)
        return None if stored is None else json.loads(stored)

    def _keep(self, parts: list[Any], value: Any) -> None:
        if self.cache is not None:
            self.cache.put(parts, json.dumps(value, separators=(",", ":")).encode())

    def total(self, count: Callable[[], int]) -> int:
        """How many resources the search finds (its consent exclusion applied)."""
        parts = ["total", self.query]
        stored = self._recall(parts)
        if isinstance(stored, int):
            return stored
        total = count()
        self._keep(parts, total)
        return total

    def page(self, position: Position | None, locate: Callable[[], Located]) -> Located:
        """The page that starts at `position`, of the request's size."""
        parts = ["page", self.query, position_parts(position), self.request.count]
        stored = self._recall(parts)
        if stored is not None:
            located = located_decode(self.request, stored)
            if located is not None:
                return located
        located = locate()
        self._keep(parts, located_encode(located))
        return located

    def included(
        self, matches: list[Resource], resolve: Callable[[], list[Resource]]
    ) -> list[Resource]:
        """What the request's _include/_revinclude bring in for the page `matches`."""
        request = self.request
        parts = ["include", request.includes, request.revincludes, [r.pk for r in matches]]
        stored = self._recall(parts)
        if isinstance(stored, list):
            rows = list(with_stored_text(Resource.objects.filter(pk__in=stored, deleted=False)))
            if len(rows) == len(stored):
                by_pk = {row.pk: row for row in rows}
                return [by_pk[pk] for pk in stored]
        included = resolve()
        self._keep(parts, [row.pk for row in included])
        return included
