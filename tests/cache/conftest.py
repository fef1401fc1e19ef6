"""Fixtures for the cache store: a tenant schema name of the test's own (its keys, tokens
and stats are nobody else's), a clean process state, and helpers to fill entries."""

import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import redis
from django.conf import settings

from fhirplatform.cache.generations import generations_reset_local_state
from fhirplatform.cache.rules import rules_cache
from fhirplatform.cache.store import (
    Lookup,
    Namespace,
    cache_fill,
    cache_key,
    cache_lookup,
    store_reset_local_state,
)
from scripts.loopback import free_port


def cache_reset() -> None:
    store_reset_local_state()
    generations_reset_local_state()
    rules_cache.clear()


@pytest.fixture(autouse=True)
def clean_cache_state() -> Iterator[None]:
    cache_reset()
    yield
    cache_reset()


@pytest.fixture
def schema() -> str:
    """A tenant schema name no other test uses (the store needs no PostgreSQL schema).

    Its purge counts as queued already, so its bumps queue no task: a worker would refuse
    one for a schema PostgreSQL does not know (tests that purge call the purge directly)."""
    name = "t_cache_" + uuid.uuid4().hex[:12]
    redis.Redis.from_url(settings.REDIS_URL).set(f"fp:c:{name}:purge", "1", ex=600)
    return name


@pytest.fixture
def direct() -> redis.Redis:
    """The cache's Redis, to look at what the store wrote."""
    return redis.Redis.from_url(settings.REDIS_URL)


@pytest.fixture
def redis_down(settings: Any) -> str:
    """The cache pointed at a loopback port nobody listens on."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    settings.CACHE_REDIS_URL = url
    return url


def key_for(
    schema: str,
    *,
    client: str = "client-a",
    scopes: str = "system/*.rs",
    purpose: str | None = "TREAT",
    request: str = "GET /Patient/1",
    namespace: Namespace = Namespace.RESPONSE,
) -> str:
    return cache_key(
        namespace=namespace,
        tenant_schema=schema,
        client_id=client,
        scopes=scopes,
        purpose=purpose,
        request=request,
    )


def lookup(schema: str, key: str, names: Sequence[str] = ()) -> Lookup:
    return cache_lookup(key=key, tenant_schema=schema, tenant_names=list(names))


def fill(
    schema: str,
    key: str,
    *,
    depends_on: Sequence[str] = (),
    payload: bytes = b'{"resourceType":"Patient"}',
    ttl: int = 30,
    swr: int = 0,
    epoch_seen: str | None = None,
) -> bool:
    """A lookup (for its epoch token, unless given) then a fill, as the pipeline does."""
    if epoch_seen is None:
        epoch_seen = lookup(schema, key).tokens["epoch"]
    return cache_fill(
        key=key,
        tenant_schema=schema,
        epoch_seen=epoch_seen,
        depends_on=list(depends_on),
        payload=payload,
        ttl=ttl,
        swr=swr,
    )
