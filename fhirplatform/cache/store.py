"""The entry store: keys, the lookup (one EVALSHA) and the fill (one EVALSHA).

The pipeline's use, in DESIGN order:
    lookup = cache_lookup(key=..., tenant_schema=S, tenant_names=[EPOCH, POLICY, CONSENT])
    lookup.bypass -> decide and answer from PostgreSQL (X-Cache: BYPASS)
    lookup.hit    -> serve lookup.payload (X-Cache: HIT, Age: lookup.age)
    otherwise     -> answer from PostgreSQL, then
                     cache_fill(key=..., epoch_seen=lookup.tokens[EPOCH], depends_on=[...])
"""

import hashlib
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import redis
from django.conf import settings

from fhirplatform.cache import metrics
from fhirplatform.cache.generations import EPOCH, token_base
from fhirplatform.cache.keys import (
    Namespace,
    entry_key_check,
    generation_key,
    index_key,
    refresh_lock_key,
    stats_key,
    tenant_prefix,
)
from fhirplatform.cache.link import link

__all__ = ["Lookup", "Namespace", "cache_fill", "cache_key", "cache_lookup"]


@dataclass(frozen=True)
class Lookup:
    hit: bool = False
    payload: bytes | None = None  # the stored bytes, on a hit
    stored_at: float | None = None  # epoch seconds (Redis TIME), on a hit
    age: int = 0  # whole seconds since stored (the Age header), on a hit
    fresh_for: float = 0.0  # seconds until it goes past its ttl (<= 0: stale), on a hit
    stale: bool = False  # a hit past its ttl, within its stale-while-revalidate window
    refreshing: bool = False  # a miss that holds the refresh lock: this caller refreshes
    bypass: bool = False  # Redis unreachable: nothing was read, no tokens
    # The current tokens of the tenant_names asked for (EPOCH always among them).
    tokens: Mapping[str, str] = field(default_factory=dict)


_BYPASS = Lookup(bypass=True)


@lru_cache(maxsize=4)
def _digest_key(secret: str) -> bytes:
    # Keyed: the request text may hold PHI (a search by name), and a plain hash of it could
    # be guessed back by whoever can list the keys.
    return hashlib.sha256(b"fhirplatform.cache.key\0" + secret.encode()).digest()


def _digest(*parts: str) -> str:
    hasher = hashlib.blake2b(digest_size=20, key=_digest_key(settings.SECRET_KEY))
    for part in parts:
        encoded = part.encode()
        hasher.update(len(encoded).to_bytes(4, "big") + encoded)  # unambiguous joins
    return hasher.hexdigest()


def scopes_normalised(scopes: str) -> str:
    """The same granted scopes in any order are the same authority."""
    return " ".join(sorted(set(scopes.split())))


def cache_key(
    *,
    namespace: Namespace,
    tenant_schema: str,
    client_id: str,
    scopes: str,
    purpose: str | None,
    request: str,
) -> str:
    """`fp:c:S:r:<digest>` (or `:s:` for SEMANTIC). The digest names the client, the scopes,
    the purpose and the normalised request text the caller gives (method, path, sorted
    query, representation headers); the key itself holds no PHI and no query."""
    prefix = tenant_prefix(tenant_schema)
    digest = _digest(
        namespace.value,
        tenant_schema,
        client_id,
        _digest(scopes_normalised(scopes)),
        "" if purpose is None else "p:" + purpose,  # no purpose is not the purpose ""
        _digest(request),
    )
    return f"{prefix}{namespace.value}:{digest}"


class _Bypasses:
    """Bypasses counted in process while Redis is unreachable, per tenant schema; the next
    lookup of the tenant that reaches Redis adds them to its stats in the same script."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def add(self, tenant_schema: str) -> None:
        metrics.bypasses.inc()
        with self.lock:
            self.counts[tenant_schema] += 1

    def take(self, tenant_schema: str) -> int:
        with self.lock:
            return self.counts.pop(tenant_schema, 0)

    def give_back(self, tenant_schema: str, count: int) -> None:
        if count:
            with self.lock:
                self.counts[tenant_schema] += count

    def clear(self) -> None:
        with self.lock:
            self.counts.clear()


bypasses = _Bypasses()


def cache_lookup(*, key: str, tenant_schema: str, tenant_names: Sequence[str]) -> Lookup:
    """ONE EVALSHA: the entry if it is there, fresh (or stale within its swr while another
    request refreshes it) and filled under generations that are all still current; always
    the current tokens of `tenant_names` (EPOCH added). Hits and misses are counted in the
    same script. Redis unreachable: Lookup(bypass=True) after one timeout at most."""
    tier = entry_key_check(key=key, tenant_schema=tenant_schema)
    names = list(dict.fromkeys([EPOCH.value, *tenant_names]))
    if not link.available():
        bypasses.add(tenant_schema)
        return _BYPASS
    folded = bypasses.take(tenant_schema)
    keys = [key, stats_key(tenant_schema), index_key(tenant_schema), refresh_lock_key(key)]
    keys += [generation_key(tenant_schema, name) for name in names]
    args: list[str | int | bytes] = [
        token_base(),
        settings.CACHE_GENERATION_TTL_SECONDS,
        settings.CACHE_REFRESH_LOCK_SECONDS,
        folded,
        tier.counter_prefix,
    ]
    try:
        client, scripts = link.connect()
        reply = scripts.lookup(keys=keys, args=args, client=client)
    except redis.RedisError as exc:
        link.mark_down(exc, operation="lookup")
        bypasses.give_back(tenant_schema, folded)
        bypasses.add(tenant_schema)
        return _BYPASS
    link.mark_up()
    outcome = reply[0].decode()
    tokens = {name: token.decode() for name, token in zip(names, reply[5:], strict=True)}
    if outcome in ("hit", "stale"):
        return Lookup(
            hit=True,
            payload=bytes(reply[1]),
            stored_at=float(reply[2]),
            age=int(reply[3]) // 1000,
            fresh_for=int(reply[4]) - int(reply[3]) / 1000,
            stale=outcome == "stale",
            tokens=tokens,
        )
    return Lookup(refreshing=outcome == "refresh", tokens=tokens)


def cache_fill(
    *,
    key: str,
    tenant_schema: str,
    epoch_seen: str,
    depends_on: Sequence[str],
    payload: bytes,
    ttl: int,
    swr: int,
) -> bool:
    """ONE EVALSHA: store `payload` under the current tokens of `depends_on` (generation
    names; missing ones created), for ttl seconds (+ swr stale), unless the tenant's epoch
    is no longer `epoch_seen` (a change committed since the lookup): then nothing is stored
    and False returned. False too when not cacheable (ttl 0, too large) or Redis is down."""
    tier = entry_key_check(key=key, tenant_schema=tenant_schema)
    if ttl <= 0 or swr < 0:
        return False
    if len(payload) > settings.CACHE_MAX_PAYLOAD_BYTES:
        metrics.fills_refused.labels(reason="too_large").inc()
        return False
    if not link.available():
        return False
    keys = [
        key,
        stats_key(tenant_schema),
        index_key(tenant_schema),
        refresh_lock_key(key),
        generation_key(tenant_schema, EPOCH.value),
    ]
    keys += [generation_key(tenant_schema, name) for name in dict.fromkeys(depends_on)]
    args: list[str | int | bytes] = [
        epoch_seen,
        payload,
        ttl,
        swr,
        token_base(),
        settings.CACHE_GENERATION_TTL_SECONDS,
        tier.counter_prefix,
    ]
    try:
        client, scripts = link.connect()
        stored = scripts.fill(keys=keys, args=args, client=client)
    except redis.RedisError as exc:
        link.mark_down(exc, operation="fill")
        return False
    link.mark_up()
    return bool(stored)


def store_reset_local_state() -> None:
    """Forget the breaker and the bypasses counted in process (tests; a fresh process)."""
    link.reset()
    bypasses.clear()
