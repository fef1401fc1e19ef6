"""FHIR dateTime values and Period membership, for provision.period."""

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone

# FHIR dateTime: a year, month or day, or a day with a time. Seconds and the zone are
# optional here: a value without a zone is read as UTC rather than refused.
_DATETIME = re.compile(
    r"(?P<year>[0-9]{4})(-(?P<month>[0-9]{2})(-(?P<day>[0-9]{2})"
    r"(T(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2})(:(?P<second>[0-9]{2})(?P<fraction>\.[0-9]+)?)?"
    r"(?P<zone>Z|[+-][0-9]{2}:[0-9]{2})?)?)?)?",
    re.ASCII,
)


def datetime_span(*, value: object) -> tuple[datetime, datetime] | None:
    """The instants a FHIR dateTime covers, as [first, after); None when unreadable.

    A partial date covers its whole precision ("2026-05" is all of May, in UTC), so a
    period ending "2026-05" still contains 31 May. A value with a time is one instant
    and its span is empty ([t, t)), which makes a period's end exclusive."""
    if not isinstance(value, str):
        return None
    match = _DATETIME.fullmatch(value)
    if match is None:
        return None
    year, month, day = (int(match[name] or 1) for name in ("year", "month", "day"))
    try:
        if match["hour"] is not None:
            first = datetime(
                year,
                month,
                day,
                int(match["hour"]),
                int(match["minute"]),
                int(match["second"] or 0),
                int((match["fraction"] or ".0")[1:7].ljust(6, "0")),
                tzinfo=_zone(match["zone"]),
            )
            return first, first
        first = datetime(year, month, day, tzinfo=UTC)
        if match["day"] is not None:
            return first, first + timedelta(days=1)
        if match["month"] is not None:
            return first, datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
        return first, datetime(year + 1, 1, 1, tzinfo=UTC)
    except (ValueError, OverflowError):  # 2026-02-30, 25:00, year 0000 or past 9999
        return None


def _zone(text: str | None) -> timezone:
    if text is None or text == "Z":
        return UTC
    sign = -1 if text[0] == "-" else 1
    hours, minutes = int(text[1:3]), int(text[4:6])
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


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
