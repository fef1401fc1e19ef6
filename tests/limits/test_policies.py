"""Which limits apply to a request: plans, overrides folded in one pass, the kill switch.
No Redis here: these are the LimitSets the deciders are given."""

import pytest

from fhirplatform.limits.codes import EndpointClass
from fhirplatform.limits.models import LimitOverride
from fhirplatform.limits.policies import LimitItem, LimitSet, limit_set_for
from fhirplatform.limits.selectors import limit_profile_load
from fhirplatform.limits.services import limit_override_save, limiter_switch_set
from tenants.tokens import Caller
from tests.limits.conftest import plan_make

pytestmark = pytest.mark.django_db

READ, SEARCH = EndpointClass.READ, EndpointClass.SEARCH


def limits_of(caller: Caller, endpoint_class: EndpointClass, resource_type="Patient") -> LimitSet:
    profile = limit_profile_load(tenant=caller.tenant, client=caller.client, grant=caller.grant)
    return limit_set_for(
        profile=profile, caller=caller, endpoint_class=endpoint_class, resource_type=resource_type
    )


def items(limits: LimitSet) -> list[LimitItem]:
    return [*limits.buckets, *limits.dailies, *limits.slots]


def override(**fields) -> LimitOverride:
    return limit_override_save(override=LimitOverride(**fields))


def test_plain_caller_gets_tenant_and_endpoint_buckets_and_no_actor(cast, new_caller):
    caller = new_caller(cast.tenant_a)
    limits = limits_of(caller, READ)
    cid = caller.client.client_id
    assert [(b.policy, b.key) for b in limits.buckets] == [
        ("tenant-read", "fp:rl:provider-a:tenant:read"),
        ("endpoint-read", f"fp:rl:provider-a:grant:{cid}:read"),
    ]
    assert [d.policy for d in limits.dailies] == ["tenant-daily", "daily"]
    assert [s.policy for s in limits.slots] == ["tenant-concurrency", "endpoint-concurrency"]
    assert not any(":actor:" in item.key for item in items(limits))


def test_a_class_override_wins_over_the_class_wide_one(cast, new_caller):
    caller = new_caller(cast.tenant_a, plan_make(read_per_minute=600, search_per_minute=600))
    grant = {"tenant": cast.tenant_a, "client": caller.client}
    override(**grant, endpoint_class=READ, per_minute=30, concurrency=3, daily_quota=9)
    override(**grant, per_minute=60, burst_seconds=5, concurrency=7, daily_quota=70)

    read = limits_of(caller, READ)
    endpoint = next(b for b in read.buckets if b.policy == "endpoint-read")
    assert (endpoint.quota, endpoint.window, endpoint.burst_seconds) == (30, 60, 5)
    # Concurrency and daily quotas are not per class: only the class-wide override counts.
    assert [s.cap for s in read.slots if s.policy == "endpoint-concurrency"] == [7]
    assert [d.quota for d in read.dailies if d.policy == "daily"] == [70]

    search = limits_of(caller, SEARCH)
    endpoint = next(b for b in search.buckets if b.policy == "endpoint-search")
    assert (endpoint.quota, endpoint.burst_seconds) == (60, 5)


def test_a_client_bucket_only_with_a_client_plan_or_override(cast, new_caller):
    caller = new_caller(cast.tenant_a)
    override(client=caller.client, endpoint_class=SEARCH, per_minute=12)
    assert "client-read" not in [b.policy for b in limits_of(caller, READ).buckets]
    client = next(b for b in limits_of(caller, SEARCH).buckets if b.policy == "client-search")
    assert (client.key, client.quota) == (f"fp:rl:client:{caller.client.client_id}:search", 12)


def test_resource_overrides_apply_to_their_type_and_client_only(cast, new_caller):
    caller, other = new_caller(cast.tenant_a), new_caller(cast.tenant_a)
    override(tenant=cast.tenant_a, resource_type="Binary", per_minute=6)
    override(tenant=cast.tenant_a, client=other.client, resource_type="Binary", per_minute=3)
    override(tenant=cast.tenant_a, resource_type="Binary", endpoint_class=SEARCH, per_minute=2)

    binary = [b for b in limits_of(caller, READ, "Binary").buckets if b.policy.startswith("res")]
    assert [(b.policy, b.quota) for b in binary] == [("resource-Binary", 6)]
    assert binary[0].key == "fp:rl:provider-a:resource:Binary:all:all"
    others = limits_of(other, READ, "Binary").buckets
    assert sorted(b.quota for b in others if b.policy.startswith("resource")) == [3, 6]
    assert not [b for b in limits_of(caller, READ).buckets if b.policy.startswith("resource")]


def test_the_kill_switch_makes_every_limit_dry_run(cast, new_caller):
    caller = new_caller(cast.tenant_a)
    limiter_switch_set(enabled=False)
    limits = limits_of(caller, READ)
    assert all(item.dry_run for item in items(limits))
    assert limits.overload_dry
