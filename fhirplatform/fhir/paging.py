"""Paging rules shared by search and history: how many results a page may hold, and the
one signed-cursor scheme their page links carry.

A cursor names the edge row of a page (keyset paging, never OFFSET). It is signed
together with the tenant, the client and a digest of the query it belongs to, so a link
replays only for whoever was given it and only for the query that made it. Every cursor
that is not valid for this caller and query gets the same 400, whatever the reason:
saying which (another tenant's, another client's, tampered, another query's) would tell
a caller something about links it was never given.
"""

import hashlib
import json
from typing import Any

from django.conf import settings
from django.core import signing

from fhirplatform.errors import FhirError, IssueCode
from fhirplatform.fhir.http import digits_parse
from tenants.tokens import Caller

DEFAULT_COUNT = 50
CURSOR_PARAM = "_cursor"
_CURSOR_SALT = "fhirplatform.fhir.paging.cursor"


def count_parse(raw: str | None, *, default: int = DEFAULT_COUNT) -> int:
    """The page size a request asks for with `_count`.

    400 for anything but a non-negative integer in ASCII digits; 400 `too-costly` above
    FHIR_MAX_COUNT, rather than a silently shorter page the client did not ask for.
    """
    if raw is None or raw == "":
        return default
    count = digits_parse(raw)
    if count is None:
        raise FhirError(
            400,
            IssueCode.VALUE,
            f"_count must be a non-negative integer, got '{raw[:100]}'",
            expression=["_count"],
        )
    cap = settings.FHIR_MAX_COUNT
    if count > cap:
        raise FhirError(
            400,
            IssueCode.TOO_COSTLY,
            f"_count={count} is above the maximum page size {cap}; page through results",
            expression=["_count"],
        )
    return count


def cursor_digest(*query: Any) -> str:
    """A short digest naming one query (its kind and every parameter that shapes the
    result, not the page size): a cursor made for it replays only for it."""
    canonical = json.dumps(query, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def cursor_invalid() -> FhirError:
    """The one answer to a cursor that is not valid for this caller and query."""
    return FhirError(
        400,
        IssueCode.INVALID,
        "The paging link is not valid for this client or query; start again from the first page",
        expression=[CURSOR_PARAM],
    )


def cursor_make(*, caller: Caller, digest: str, position: dict[str, Any]) -> str:
    """A signed cursor for `position` (the page edge, JSON-ready) of the query `digest`."""
    payload = {
        "t": caller.tenant.schema_name,
        "c": caller.client.client_id,
        "q": digest,
        "p": position,
    }
    return signing.dumps(payload, salt=_CURSOR_SALT, compress=True)


def cursor_read(*, caller: Caller, cursor: str, digest: str) -> dict[str, Any]:
    """The position a cursor carries, if it was made for this tenant, client and query;
    otherwise `cursor_invalid()`."""
    try:
        payload = signing.loads(cursor, salt=_CURSOR_SALT)
    except signing.BadSignature:
        raise cursor_invalid() from None
    if (
        not isinstance(payload, dict)
        or payload.get("t") != caller.tenant.schema_name
        or payload.get("c") != caller.client.client_id
        or payload.get("q") != digest
        or not isinstance(payload.get("p"), dict)
    ):
        raise cursor_invalid()
    return dict(payload["p"])
