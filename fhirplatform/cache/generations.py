"""Generations: random tokens in Redis that a committed change replaces.

Per tenant schema S (keys.py): `fp:c:S:g:epoch` (replaced by EVERY change in the tenant),
`...:g:policy`, `...:g:consent` (any Consent written), `...:g:p:<patient id>`,
`...:g:t:<resource type>`. An entry (and any in-process snapshot) remembers the tokens it
was made under and is valid only while they are still current.

A token is random, never a counter: Redis keeps nothing on disk, and a counter starting
again at 0 could make an old snapshot look current. A missing key is created with a fresh
token when read, so a reader never sees "none".

`generations_changed` runs in the writers' `transaction.on_commit` callbacks: the change has
committed, so it never raises. When Redis cannot take the bump, the bump is kept and re-sent
(with the next bump, or by a background retry) until Redis takes it, and this process's
local epoch moves on, so its in-process snapshots are dropped at once.
"""

import logging
import secrets
import threading
import time
from collections.abc import Iterable, Sequence
from enum import StrEnum

import redis
from django.conf import settings

from fhirplatform.cache import metrics
from fhirplatform.cache.keys import (
    StatField,
    generation_key,
    purge_marker_key,
    stats_key,
    tenant_prefix,
)
from fhirplatform.cache.link import cache_redis, link

logger = logging.getLogger(__name__)

# How long "a purge is queued" dedupes further purges of the tenant; the task clears it as
# it starts, so a change during a purge queues the next one.
PURGE_MARKER_SECONDS = 60


class GenerationName(StrEnum):
    EPOCH = "epoch"
    POLICY = "policy"
    CONSENT = "consent"


EPOCH = GenerationName.EPOCH
POLICY = GenerationName.POLICY
CONSENT = GenerationName.CONSENT


def gen_patient(patient_id: str) -> str:
    """The generation of one patient's compartment (any write to it, a merge, ...)."""
    return f"p:{patient_id}"


def gen_type(resource_type: str) -> str:
    """The generation of one resource type (any write of it: searches depend on it)."""
    return f"t:{resource_type}"


def token_base() -> str:
    """The random part of the tokens one call may create (Lua appends the key's index)."""
    return secrets.token_hex(8)


def generations_read(*, tenant_schema: str, names: Sequence[str]) -> dict[str, str] | None:
    """The current tokens of `names` (missing ones created); None when Redis is unreachable."""
    keys = [generation_key(tenant_schema, name) for name in names]
    if not keys:
        return {}
    if not link.available():
        return None
    try:
        client, scripts = link.connect()
        tokens = scripts.generations_read(
            keys=keys,
            args=[token_base(), settings.CACHE_GENERATION_TTL_SECONDS],
            client=client,
        )
    except redis.RedisError as exc:
        link.mark_down(exc, operation="generations_read")
        return None
    link.mark_up()
    return {name: token.decode() for name, token in zip(names, tokens, strict=True)}


class _Bumps:
    """Bumps that did not reach Redis, by tenant schema, and the thread re-sending them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: dict[str, set[str]] = {}
        self.retrier: threading.Thread | None = None
        # Moves on with every bump this process could not deliver (see generations_local_epoch).
        self.local_epoch = 0

    def take(self) -> dict[str, set[str]]:
        with self.lock:
            pending, self.pending = self.pending, {}
            return pending

    def give_back(self, bumps: dict[str, set[str]]) -> None:
        with self.lock:
            self.local_epoch += 1
            for schema, keys in bumps.items():
                self.pending.setdefault(schema, set()).update(keys)
            if self.retrier is None or not self.retrier.is_alive():
                self.retrier = threading.Thread(
                    target=_retry_pending, name="cache-generation-bumps", daemon=True
                )
                self.retrier.start()

    def clear(self) -> None:
        with self.lock:
            self.pending.clear()


_bumps = _Bumps()


def generations_local_epoch() -> int:
    """A number this process moves on whenever it could not publish a bump. An in-process
    snapshot keyed by generation tokens must also remember this and be dropped when it
    changes: its tokens may still be current in Redis although its data is not."""
    return _bumps.local_epoch


def _send(bumps: dict[str, set[str]]) -> list[str]:
    """Every key of `bumps` to a fresh token, each tenant's invalidation counted, in ONE
    round trip (MULTI/EXEC, so a reader sees all of a bump or none). Returns the tenants
    whose purge was not queued already (their marker is now set)."""
    base = token_base()
    ttl = settings.CACHE_GENERATION_TTL_SECONDS
    pipe = cache_redis().pipeline(transaction=True)
    schemas = sorted(bumps)
    for schema in schemas:
        for index, key in enumerate(sorted(bumps[schema])):
            pipe.set(key, f"{base}.{schema}.{index}", ex=ttl)
        pipe.hincrby(stats_key(schema), StatField.INVALIDATIONS, 1)
        pipe.set(purge_marker_key(schema), "1", nx=True, ex=PURGE_MARKER_SECONDS)
    replies = pipe.execute()
    # Each tenant's replies end with its marker's SET NX: True when this bump set it.
    queued: list[str] = []
    position = -1
    for schema in schemas:
        position += len(bumps[schema]) + 2
        if replies[position]:
            queued.append(schema)
    return queued


def _purge_enqueue(tenant_schema: str) -> None:
    from fhirplatform.cache.tasks import cache_purge

    try:
        # No publish retries: this runs at the end of a write's request.
        cache_purge.apply_async(kwargs={"tenant_schema": tenant_schema}, retry=False)
    except Exception:
        # The entries are unreachable already; they expire by themselves, and the next
        # bump queues a purge again once its marker has expired.
        metrics.purge_enqueue_errors.inc()
        logger.warning(
            "cache: purge task not enqueued", extra={"tenant_schema": tenant_schema}, exc_info=True
        )


def _deliver(bumps: dict[str, set[str]], *, operation: str) -> bool:
    if not link.available():
        _bumps.give_back(bumps)
        metrics.bumps_failed.inc()
        return False
    try:
        queued = _send(bumps)
    except redis.RedisError as exc:
        link.mark_down(exc, operation=operation)
        _bumps.give_back(bumps)
        metrics.bumps_failed.inc()
        logger.warning(
            "cache: generation bump not delivered; re-sent when Redis answers",
            extra={"tenant_schemas": sorted(bumps)},
        )
        return False
    link.mark_up()
    for schema in queued:
        _purge_enqueue(schema)
    return True


def _retry_pending() -> None:
    while True:
        time.sleep(settings.CACHE_REDIS_RETRY_SECONDS)
        bumps = _bumps.take()
        if not bumps:
            return
        if _deliver(bumps, operation="generations_retry"):
            logger.warning("cache: delayed generation bumps delivered")
            return


def generations_changed(
    *,
    tenant_schema: str,
    patients: Iterable[str] = (),
    resource_types: Iterable[str] = (),
    consent: bool = False,
    policy: bool = False,
) -> None:
    """Make every entry filled under the named generations unreachable: the epoch and each
    named generation get fresh tokens in one round trip, then the tenant's purge task is
    enqueued (at most one queued per tenant). Call it once the change has committed
    (`transaction.on_commit`). Never raises: Redis or broker errors are logged and counted,
    and an undelivered bump is re-sent until Redis takes it."""
    tenant_prefix(tenant_schema)  # a bad schema name is the caller's bug: raise it now
    names = [EPOCH.value]
    names += [gen_patient(patient) for patient in patients]
    names += [gen_type(resource_type) for resource_type in resource_types]
    if consent:
        names.append(CONSENT.value)
    if policy:
        names.append(POLICY.value)
    bumps = _bumps.take()  # earlier undelivered bumps ride along
    bumps.setdefault(tenant_schema, set()).update(
        generation_key(tenant_schema, name) for name in names
    )
    try:
        _deliver(bumps, operation="generations_changed")
    except Exception:
        # Not a Redis error (a bug): still never fail a committed write, still re-send.
        _bumps.give_back(bumps)
        logger.exception("cache: generation bump failed")


def generations_reset_local_state() -> None:
    """Forget undelivered bumps (tests; a fresh process)."""
    _bumps.clear()
