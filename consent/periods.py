"""FHIR dateTime values and Period membership, for provision.period."""

from collections.abc import Mapping
from datetime import datetime

from fhirplatform.fhir.search.values import MAX_INSTANT, date_range


def datetime_span(*, value: object) -> tuple[datetime, datetime] | None:
    """The instants a FHIR dateTime covers, as [first, after); None when unreadable.

    Read as the search reads dates (search.values.date_range; a value without a zone is
    UTC). A partial date covers its whole precision ("2026-05" is all of May, in UTC), so a
    period ending "2026-05" still contains 31 May. A value with a time is one instant and
    its span is empty ([t, t)), which makes a period's end exclusive. A date in the year
    9999 whose span would run past the calendar is unreadable: no instant comes after it."""
    if not isinstance(value, str) or value != value.strip():
        return None
    span = date_range(value)
    if span is None:
        return None
    if "T" in value:
        return span.low, span.low
    if span.high >= MAX_INSTANT:
        return None
    return span.low, span.high


def period_edges(*, period: object) -> list[datetime]:
    """The instants at which `now` may enter or leave the period: where a decision that
    depends on it can change."""
    if not isinstance(period, Mapping):
        return []
    edges = []
    for name, side in (("start", 0), ("end", 1)):
        span = datetime_span(value=period.get(name)) if name in period else None
        if span is not None:
            edges.append(span[side])
    return edges


def period_contains(*, period: object, now: datetime) -> bool | None:
    """Whether `now` lies in a FHIR Period (start inclusive, end exclusive, either may be
    open); None when the period cannot be read, including one that ends before it starts."""
    if not isinstance(period, Mapping):
        return None
    start = end = None
    if "start" in period:
        span = datetime_span(value=period["start"])
        if span is None:
            return None
        start = span[0]
    if "end" in period:
        span = datetime_span(value=period["end"])
        if span is None:
            return None
        end = span[1]
    if start is not None and end is not None and start > end:
        return None
    return (start is None or start <= now) and (end is None or now < end)
