"""`Idempotency-Key` for POST and PATCH (creates, batch/transaction Bundles).

IETF httpapi idempotency-key draft semantics, keys scoped to tenant + client:
the first request claims the key; a replay of the same request gets the stored
response (status, headers, body) back; a duplicate that arrives while the first
is still running gets 409; the same key with a different request gets 422.
Keys live in Redis for IDEMPOTENCY_TTL_SECONDS.

The first outcome is stored whatever it was, a 4xx or a 5xx included: a server error may
come after some writes were made (a batch's earlier entries, a write whose answer then
failed), so running the request again under the same key could write twice. Only a
request that never finished (its worker died) frees its key, when the in-flight claim
expires.
"""

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

import redis
from django.conf import settings
from django.http import HttpResponse
from rest_framework.request import Request

from fhirplatform.errors import FhirError, IssueCode
from fhirplatform.fhir.numbers import exact_dumps
from fhirplatform.redis_clients import redis_client
from tenants.tokens import Caller

logger = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
IDEMPOTENT_METHODS = frozenset({"POST", "PATCH"})
_KEY_PATTERN = re.compile(r'^"?([\x21\x23-\x7e]{1,255})"?$')  # an sf-string (quotes optional)
_REPLAYED_HEADERS = ("Content-Type", "Location", "Content-Location", "ETag", "Last-Modified")

# Claim the key, or return what it holds, in one round trip.
_CLAIM = r"""
local current = redis.call('GET', KEYS[1])
if current then return current end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""

_connection: dict[str, tuple[redis.Redis, Any]] = {}


def _redis() -> tuple[redis.Redis, Any]:
    url = settings.LIMITS_REDIS_URL
    if url not in _connection:
        client = redis_client(url, timeout_seconds=settings.LIMITS_REDIS_TIMEOUT_MS / 1000)
        _connection[url] = (client, client.register_script(_CLAIM))
    return _connection[url]


class IdempotentReplay(Exception):
    """Raised to short-circuit the handler with the stored response."""

    def __init__(self, record: dict[str, Any]) -> None:
        super().__init__("idempotent replay")
        self.record = record

    def response(self) -> HttpResponse:
        response = HttpResponse(
            self.record["body"].encode(),
            status=self.record["status"],
            content_type=self.record["headers"].get("Content-Type", "application/fhir+json"),
        )
        for name, value in self.record["headers"].items():
            response[name] = value
        response[REPLAYED_HEADER] = "?1"
        # The first answer was logged when it was made; a replayed 5xx is not a new error.
        response._has_been_logged = True  # type: ignore[attr-defined]
        return response


@dataclass
class IdempotencyClaim:
    redis_key: str
    fingerprint: str

    def complete(self, response: Any) -> None:
        """Store the response, whatever its status, for every replay of the request; but a
        503 frees the key. The platform answers 503 only when nothing was applied (the
        transaction was rolled back, or the database was out of reach) and tells the client
        to send the request again: a replayed 503 would refuse that retry for a day."""
        client, _ = _redis()
        try:
            if response.status_code == 503:
                client.delete(self.redis_key)
                return
            if hasattr(response, "render") and not getattr(response, "is_rendered", True):
                response.render()
            record = {
                "state": "done",
                "fingerprint": self.fingerprint,
                "status": response.status_code,
                "headers": {h: response[h] for h in _REPLAYED_HEADERS if response.has_header(h)},
                "body": response.content.decode("utf-8"),
            }
            client.set(self.redis_key, json.dumps(record), ex=settings.IDEMPOTENCY_TTL_SECONDS)
        except redis.RedisError:
            logger.error("idempotency: response could not be stored", extra={"key": self.redis_key})


def _fingerprint(request: Request) -> str:
    try:
        # Exact numbers: a body sent again with 1.5 for 1.50 is another request.
        body = exact_dumps(request.data, sort_keys=True).decode()
    except (TypeError, ValueError):
        body = repr(request.data)
    text = f"{request.method} {request.path}\n{body}"
    return hashlib.sha256(text.encode()).hexdigest()


def idempotency_begin(*, request: Request, caller: Caller) -> IdempotencyClaim | None:
    """Claim the request's Idempotency-Key, or raise IdempotentReplay / FhirError 409/422."""
    header = request.headers.get(HEADER)
    if header is None or request.method not in IDEMPOTENT_METHODS:
        return None
    match = _KEY_PATTERN.match(header.strip())
    if not match:
        raise FhirError(
            400,
            IssueCode.VALUE,
            "Idempotency-Key must be 1-255 visible ASCII characters, e.g. a UUID",
        )
    digest = hashlib.sha256(match.group(1).encode()).hexdigest()
    redis_key = f"fp:idem:{caller.tenant.slug}:{caller.client.client_id}:{digest}"
    fingerprint = _fingerprint(request)
    claim = json.dumps({"state": "in-flight", "fingerprint": fingerprint})
    try:
        client, script = _redis()
        # An in-flight claim only lives as long as a request can: a crashed worker frees it.
        current = script(
            keys=[redis_key], args=[claim, settings.LIMITS_LEASE_SECONDS], client=client
        )
    except redis.RedisError:
        raise FhirError(
            503,
            IssueCode.TRANSIENT,
            "Idempotency keys cannot be honoured right now; retry, or send the "
            "request without Idempotency-Key",
            headers={"Retry-After": "5"},
        ) from None
    if current is None:
        return IdempotencyClaim(redis_key=redis_key, fingerprint=fingerprint)
    record = json.loads(current)
    if record["fingerprint"] != fingerprint:
        raise FhirError(
            422,
            IssueCode.CONFLICT,
            "This Idempotency-Key was already used with a different request",
        )
    if record["state"] != "done":
        raise FhirError(
            409,
            IssueCode.CONFLICT,
            "A request with this Idempotency-Key is still being processed",
            headers={"Retry-After": "1"},
        )
    raise IdempotentReplay(record)
