"""Fixtures for the limit engine: a clean limiter Redis per test, fresh plans and callers."""

import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import http_sfv
import pytest
import redis
from django.conf import settings

from audit import deferred as audit_deferred
from fhirplatform.limits import services as limit_services
from fhirplatform.limits.engine import limits_reset_local_state
from tenants.models import Grant, RatePlan, Tenant
from tenants.scopes import scopes_parse
from tenants.services import client_create, rate_plan_create
from tenants.tokens import Caller
from tests.redis_support import PrivateRedis


@pytest.fixture
def limiter_redis(settings: pytest.FixtureRequest) -> Iterator[redis.Redis]:
    """The limiter's Redis database, empty, with no cached profiles in this process."""
    settings.LIMITS_EVENTS_BACKGROUND_FLUSH = False  # type: ignore[attr-defined]
    # The gate's refusals' audit events too: a test writes them when it asks.
    settings.AUDIT_DEFERRED_BACKGROUND_FLUSH = False  # type: ignore[attr-defined]
    client = redis.Redis.from_url(settings.LIMITS_REDIS_URL)  # type: ignore[attr-defined]
    limits_reset_local_state()  # sends what earlier tests left queued, before the flush
    client.flushdb()
    limit_services._events.counts.clear()  # events of earlier, rolled-back tests
    audit_deferred._deferred._queued.clear()  # and the gate's audit events
    audit_deferred._deferred._overflow.clear()
    yield client
    limits_reset_local_state()
    limit_services._events.counts.clear()


@pytest.fixture
def own_limiter(
    settings: pytest.FixtureRequest, tmp_path: Path, limiter_redis: redis.Redis
) -> Iterator[redis.Redis]:
    """A redis-server of the test's own as the limiter's Redis: its command counts
    (INFO commandstats) are this test's alone, which the shared server's are not."""
    own = PrivateRedis(tmp_path)
    own.start()
    shared_url = settings.LIMITS_REDIS_URL  # type: ignore[attr-defined]
    settings.LIMITS_REDIS_URL = own.url  # type: ignore[attr-defined]
    try:
        yield own.client()
    finally:
        limits_reset_local_state()
        settings.LIMITS_REDIS_URL = shared_url  # type: ignore[attr-defined]
        own.stop()


def redis_calls(client: redis.Redis) -> Counter[str]:
    """Commands Redis has run, by name (those run inside scripts included; INFO left out)."""
    stats = client.info("commandstats")
    calls = Counter({name.removeprefix("cmdstat_"): v["calls"] for name, v in stats.items()})
    del calls["info"]
    return calls


def evalsha_calls(client: redis.Redis) -> int:
    return redis_calls(client)["evalsha"]


def plan_make(**limits: int | bool) -> RatePlan:
    """A plan with generous defaults; pass the limits a test is about."""
    values: dict[str, int | bool] = {
        "read_per_minute": 6000,
        "search_per_minute": 6000,
        "write_per_minute": 6000,
        "history_per_minute": 6000,
        "batch_per_minute": 6000,
        "export_per_hour": 6000,
        "export_poll_per_minute": 6000,
        "burst_seconds": 10,
        "concurrency": 1000,
        "daily_quota": 10_000_000,
        "priority": 50,
    }
    values.update(limits)
    return rate_plan_create(name="p-" + uuid.uuid4().hex[:10], description="limits test", **values)


def ratelimit_policies(headers: Mapping[str, str]) -> dict[str, dict]:
    """RateLimit-Policy and RateLimit parsed as structured-field lists, by policy name."""
    policy, state = http_sfv.List(), http_sfv.List()
    policy.parse(headers["RateLimit-Policy"].encode())
    state.parse(headers["RateLimit"].encode())
    named = {item.value: dict(item.params) for item in policy}
    for item in state:
        named[item.value].update(item.params)
    return named


def caller_for(grant: Grant) -> Caller:
    grant = Grant.objects.select_related("client", "tenant__plan", "plan").get(pk=grant.pk)
    return Caller(
        tenant=grant.tenant,
        client=grant.client,
        grant=grant,
        scopes=scopes_parse(grant.scopes),
        token_id=uuid.uuid4().hex,
    )


@pytest.fixture
def new_caller() -> Callable[..., Caller]:
    """A fresh client on a tenant, its grant on the given plan (unique keys per test)."""

    def make(tenant: Tenant, plan: RatePlan | None = None) -> Caller:
        issued = client_create(
            partner_name="Limits " + uuid.uuid4().hex[:8],
            tenant_slugs=[tenant.slug],
            scopes="system/*.cruds",
            plan_name=(plan or plan_make()).name,
        )
        return caller_for(issued.grants[0])

    return make


@pytest.fixture
def redis_url() -> str:
    return str(settings.LIMITS_REDIS_URL)


@pytest.fixture(scope="module")
def server(django_db_setup: object) -> Iterator[str]:
    """Our own gunicorn (2 workers x 4 threads) on loopback against the test database."""
    from tests.limits.live import gunicorn

    with gunicorn(workers=2, threads=4) as base:
        yield base
