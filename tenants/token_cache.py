"""The in-process cache of checked access tokens, and the generation that invalidates it.

A FHIR request's token check is a dictionary lookup by the token's hash once the token
has been read from the database. Revocation must still bite on the next request, so:

- CALLER_GENERATION_KEY is a Redis counter that every committed change to what a cached
  caller holds bumps (a token, client or grant revoked or re-activated, a grant's scopes,
  purposes or plan changed, a tenant suspended or its plan changed): `callers_changed()`,
  called by the services.
- The limiter's admission reads the counter in the same round trip that admits the
  request (limits/lua.py), and the pipeline re-reads the token from the database whenever
  the entry was checked under another generation, before anything touches tenant data.
  A request whose admission could not read it (the limiter's local fallback while Redis
  is down) is always re-read from the database.
- An entry is stamped with the generation this process had seen *before* its database
  read, so a change that commits during the read is caught by the next comparison.
- Entries never outlive their token, nor TOKEN_CACHE_SECONDS: the bound on staleness should
  a bump be lost while Redis was briefly unreachable for the process making the change.

Only tokens that passed every check are cached; refusals are decided by the database.
"""

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis
from django.conf import settings
from django.db import transaction

from fhirplatform.redis_clients import redis_client

if TYPE_CHECKING:
    from tenants.tokens import Caller

logger = logging.getLogger(__name__)

CALLER_GENERATION_KEY = "fp:auth:generation"
# A process serving many partners keeps at most this many tokens; past it, it starts afresh.
MAX_ENTRIES = 50_000


@dataclass(frozen=True)
class CachedCaller:
    caller: "Caller"
    expires_at: float  # the token's expiry, epoch seconds
    stale_at: float  # monotonic: re-read from the database after this, whatever happens
    generation: int | None  # the caller generation this was checked under (None: unknown)


class TokenCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, CachedCaller] = {}
        # The newest generation any admission in this process has read; None until one has.
        self.seen_generation: int | None = None

    def get(self, token_hash: str) -> CachedCaller | None:
        entry = self._entries.get(token_hash)
        if entry is None:
            return None
        if entry.expires_at <= time.time() or entry.stale_at <= time.monotonic():
            self.drop(token_hash)
            return None
        return entry

    def put(self, token_hash: str, entry: CachedCaller) -> None:
        with self._lock:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[token_hash] = entry

    def drop(self, token_hash: str) -> None:
        with self._lock:
            self._entries.pop(token_hash, None)

    def observe(self, generation: int | None) -> None:
        """What an admission read; None (the limiter's fallback) tells nothing."""
        if generation is not None:
            self.seen_generation = generation

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.seen_generation = None


token_cache = TokenCache()


def entry_make(*, caller: "Caller", expires_at: float, generation: int | None) -> CachedCaller:
    return CachedCaller(
        caller=caller,
        expires_at=expires_at,
        stale_at=time.monotonic() + settings.TOKEN_CACHE_SECONDS,
        generation=generation,
    )


def _generation_bump() -> None:
    try:
        redis_client(
            settings.LIMITS_REDIS_URL, timeout_seconds=settings.LIMITS_REDIS_TIMEOUT_MS / 1000
        ).incr(CALLER_GENERATION_KEY)
    except redis.RedisError:
        # Processes whose admissions cannot read Redis re-read every token anyway; the
        # others drop their entries within TOKEN_CACHE_SECONDS.
        logger.error(
            "token cache: could not publish a revocation; cached tokens expire within %s s",
            settings.TOKEN_CACHE_SECONDS,
        )
    token_cache.clear()


def callers_changed() -> None:
    """Every process re-reads its cached tokens from the database once the change being
    made commits (at once outside a transaction); this process starts now. A token read
    again before the commit is stamped with the generation before the bump, so it is read
    once more after it."""
    token_cache.clear()
    transaction.on_commit(_generation_bump)
