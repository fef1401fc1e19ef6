"""Paging rules shared by search and history: how many results a page may hold."""

from django.conf import settings

from fhirplatform.errors import FhirError, IssueCode

DEFAULT_COUNT = 50


def count_parse(raw: str | None, *, default: int = DEFAULT_COUNT) -> int:
    """The page size a request asks for with `_count`.

    400 for anything but a non-negative integer in ASCII digits; 400 `too-costly` above
    FHIR_MAX_COUNT, rather than a silently shorter page the client did not ask for.
    """
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()):
        raise FhirError(
            400,
            IssueCode.VALUE,
            f"_count must be a non-negative integer, got '{raw}'",
            expression=["_count"],
        )
    count = int(raw)
    cap = settings.FHIR_MAX_COUNT
    if count > cap:
        raise FhirError(
            400,
            IssueCode.TOO_COSTLY,
            f"_count={count} is above the maximum page size {cap}; page through results",
            expression=["_count"],
        )
    return count
