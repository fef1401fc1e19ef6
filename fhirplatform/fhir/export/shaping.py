"""`_elements` on exported resources: the named elements and what every resource keeps
(resourceType, id, meta), tagged SUBSETTED as a searchset's subsetted entries are."""

from collections.abc import Callable
from typing import Any

from fhirplatform.fhir.numbers import exact_loads
from fhirplatform.fhir.search.searchset import SUBSETTED

_ALWAYS = frozenset({"resourceType", "id", "meta"})


def elements_shaper(
    elements: list[str], resource_type: str
) -> Callable[[str], dict[str, Any]] | None:
    """What shapes the type's stored JSON text, or None when it is exported whole: no
    `_elements`, or none that applies to the type (`Type.element` names one type only)."""
    keep: set[str] = set()
    for element in elements:
        named_type, _, name = element.rpartition(".")
        if named_type in ("", resource_type):
            keep.add(name)
    if not keep:
        return None
    kept = frozenset(keep | _ALWAYS)

    def shape(text: str) -> dict[str, Any]:
        content = {k: v for k, v in exact_loads(text).items() if k in kept}
        meta = dict(content.get("meta") or {})
        meta["tag"] = [*meta.get("tag", []), SUBSETTED]
        content["meta"] = meta
        return content

    return shape
