"""Admitting a FHIR request, and releasing it when its response is done.

One decision checks every limit that applies (tenant, client, grant endpoint class,
resource type, the daily quotas, the in-flight slots and the adaptive overload limit)
and commits them only if all pass. Which limits apply: policies.py; who decides (Redis,
or the local fallback while Redis is unreachable): deciders.py; a refusal known without
asking (a closed policy, a remembered Redis refusal): memo.py; what the client is told:
headers.py. A release is queued and rides with the process's next admission
(releases.py), so a request costs one Redis round trip.
"""

import os
import time
from dataclasses import dataclass, field

from fhirplatform.errors import FhirError, IssueCode
from fhirplatform.limits import metrics
from fhirplatform.limits.codes import (
    SCOPE_REASON,
    Decider,
    EndpointClass,
    LimitScope,
    ThrottleReason,
)
from fhirplatform.limits.costs import LATENCY_TARGET_MS
from fhirplatform.limits.deciders import (
    GenerationSeen,
    ItemResult,
    deciders_reset,
    lease_release,
    limit_set_decide,
    limiter_generation_seen,
    limiter_in_fallback,
    pending_releases,
    releases_flush,
)
from fhirplatform.limits.headers import bucket_quota, ratelimit_headers, retry_after_seconds
from fhirplatform.limits.memo import refusal_memo
from fhirplatform.limits.policies import (
    DailyQuota,
    LimitItem,
    LimitSet,
    RateBucket,
    Slot,
    limit_set_for,
    limit_sets_clear,
)
from fhirplatform.limits.selectors import profile_cache
from fhirplatform.limits.services import Refusals, throttle_event_add
from tenants.tokens import Caller

__all__ = [
    "Admission",
    "EndpointClass",
    "GenerationSeen",
    "KnownRefusal",
    "ThrottleReason",
    "limit_admit",
    "limit_refusal_known",
    "limit_release",
    "limit_releases_flush",
    "limiter_generation_seen",
]


@dataclass
class Admission:
    """An admitted request: the headers to send, the lease on its in-flight slots, to
    release when the response is done, and the caller generation Redis held when it
    admitted the request (None when the local fallback decided)."""

    headers: dict[str, str] = field(default_factory=dict)
    lease_id: str = ""
    slot_keys: tuple[str, ...] = ()
    endpoint_class: EndpointClass = EndpointClass.READ
    started: float = 0.0
    decider: Decider = Decider.REDIS
    generation: int | None = None
    released: bool = False

    def release(self, *, status: int = 200) -> None:
        """Queue the release (it costs no round trip of its own)."""
        if self.released or not self.lease_id:
            return
        self.released = True
        limit_release(admission=self, status=status)


def _reason(item: LimitItem | None) -> ThrottleReason:
    """The reason code of a refusing limit; None is the platform's overload check."""
    return ThrottleReason.OVERLOAD if item is None else SCOPE_REASON[item.scope]


def _whom(scope: LimitScope, limits: LimitSet, resource_type: str) -> str:
    slug, cid = limits.tenant_slug, limits.client_id
    return {
        LimitScope.TENANT: f"tenant '{slug}'",
        LimitScope.CLIENT: f"client '{cid}' across all tenants",
        LimitScope.ENDPOINT: f"client '{cid}' on tenant '{slug}'",
        LimitScope.RESOURCE: f"{resource_type} on tenant '{slug}'",
    }[scope]


def _diagnostics(
    item: LimitItem | None,
    limits: LimitSet,
    endpoint_class: EndpointClass,
    resource_type: str,
    decider: Decider,
) -> str:
    """What a refusal tells the client: which limit, whose, and how much it allows."""
    if item is None:
        return f"The platform is overloaded and sheds {endpoint_class} traffic first"
    if isinstance(item, Slot):
        return (
            f"Too many requests in flight for {_whom(item.counts, limits, resource_type)} "
            f"(policy '{item.policy}', at most {item.cap} at once)"
        )
    if isinstance(item, DailyQuota):
        return (
            f"Daily quota of {item.quota} cost units for "
            f"{_whom(item.counts, limits, resource_type)} is used up "
            f"(policy '{item.policy}', resets 00:00 UTC)"
        )
    whom = _whom(item.scope, limits, resource_type)
    if item.scope == LimitScope.TENANT:
        whom += " (shared by all its clients)"
    how = (
        ", local fallback limits while the shared limiter is unreachable"
        if decider == Decider.LOCAL
        else f", burst {item.depth}"
    )
    return (
        f"Rate limit for {endpoint_class} requests of {whom} reached (policy '{item.policy}', "
        f"{bucket_quota(item, decider)} units per {item.window} s{how})"
    )


def _limits_for(
    caller: Caller, endpoint_class: EndpointClass, resource_type: str
) -> tuple[LimitSet, int]:
    """The request's limits and the config version they were loaded under."""
    profile, version = profile_cache.get(
        tenant=caller.tenant, client=caller.client, grant=caller.grant
    )
    limits = limit_set_for(
        profile=profile, caller=caller, endpoint_class=endpoint_class, resource_type=resource_type
    )
    return limits, version


def _refusal(
    enforced: list[tuple[LimitItem | None, ItemResult]],
    limits: LimitSet,
    endpoint_class: EndpointClass,
    resource_type: str,
    decider: Decider,
    headers: dict[str, str],
) -> FhirError:
    """The one refusal a client gets when enforced limits refused: the longest wait it
    must honour, rate limits and daily quotas before slots, slots before overload."""
    windowed = [(i, r) for i, r in enforced if isinstance(i, RateBucket | DailyQuota)]
    slots = [(i, r) for i, r in enforced if isinstance(i, Slot)]
    chosen, result = (
        max(windowed, key=lambda pair: pair[1].retry_ms)
        if windowed
        else slots[0]
        if slots
        else enforced[0]
    )
    reason = _reason(chosen)
    diagnostics = _diagnostics(chosen, limits, endpoint_class, resource_type, decider)
    retry_after = retry_after_seconds(wait_ms=result.retry_ms)
    return FhirError(
        503 if reason == ThrottleReason.OVERLOAD else 429,
        IssueCode.THROTTLED,
        f"{diagnostics}; retry after {retry_after} s",
        reason=str(reason),
        headers=headers | {"Retry-After": str(retry_after)},
    )


def _throttled(
    caller: Caller,
    limits: LimitSet,
    endpoint_class: EndpointClass,
    decided: list[tuple[LimitItem | None, ItemResult]],
) -> tuple[list[tuple[LimitItem | None, ItemResult]], tuple[Refusals, ...]]:
    """The enforced limits that refused, and a throttle event for every limit that
    refused (dry-run ones too), to record."""
    enforced: list[tuple[LimitItem | None, ItemResult]] = []
    events: list[Refusals] = []
    for item, result in decided:
        if result.ok:
            continue
        dry = limits.overload_dry if item is None else item.dry_run
        events.append(
            Refusals(
                tenant_id=caller.tenant.pk,
                client_id=caller.client.pk,
                reason=_reason(item),
                endpoint_class=endpoint_class,
                policy=item.policy if item else str(LimitScope.OVERLOAD),
                dry_run=dry,
            )
        )
        if not dry:
            enforced.append((item, result))
    return enforced, tuple(events)


def _events_record(events: tuple[Refusals, ...]) -> None:
    for refusals in events:
        throttle_event_add(refusals)


@dataclass(frozen=True)
class KnownRefusal:
    """A refusal decided in this process with no Redis call (a closed policy, or a Redis
    refusal the memo still holds), and what every request it refuses records."""

    error: FhirError
    version: int  # the limits configuration it was decided under
    certain_until: float  # time.monotonic(): the same request is refused at least until then
    events: tuple[Refusals, ...] = ()
    from_memo: bool = False

    def record(self) -> None:
        """Count one more request refused by it: its throttle events and metrics."""
        _events_record(self.events)
        if self.from_memo:
            metrics.limiter_memo_refusals.inc()
            metrics.limiter_decisions.labels("refused", str(self.error.issues[0].reason)).inc()

    def holds(self) -> bool:
        """Whether it still answers the same request: certain, decided under the limits
        in force, and the shared limiter (not the local fallback) in charge."""
        return (
            time.monotonic() < self.certain_until
            and profile_cache.seen_version == self.version
            and not limiter_in_fallback()
        )


def _known_refusal(
    caller: Caller,
    limits: LimitSet,
    version: int,
    endpoint_class: EndpointClass,
    resource_type: str,
    cost: int,
) -> KnownRefusal | None:
    """The refusal of a request that needs no Redis call: a closed policy, or a Redis
    refusal remembered by the memo that still holds (then answered as Redis would).
    Not recorded yet: the caller records it for each request it refuses."""
    now = time.monotonic()
    closed = next((b for b in limits.buckets if b.quota <= 0 and not b.dry_run), None)
    if closed is not None:
        error = FhirError(
            429,
            IssueCode.THROTTLED,
            f"Policy '{closed.policy}' allows no {endpoint_class} requests",
            reason=str(_reason(closed)),
            headers={"Retry-After": str(retry_after_seconds(wait_ms=closed.window * 1000))},
        )
        return KnownRefusal(error, version, certain_until=now + closed.window)
    if limiter_in_fallback():
        return None  # the local limiter is in charge, with its own quotas
    results = refusal_memo.recall(limits=limits, version=version, cost=cost)
    if results is None:
        return None
    headers = ratelimit_headers(limits=limits, items=results, decider=Decider.REDIS)
    windowed: list[LimitItem | None] = [*limits.buckets, *limits.dailies]
    decided = list(zip(windowed, results, strict=True))
    enforced, events = _throttled(caller, limits, endpoint_class, decided)
    error = _refusal(enforced, limits, endpoint_class, resource_type, Decider.REDIS, headers)
    # Refused until the longest wait among the enforced limits that refused it.
    wait_ms = max(result.retry_ms for _, result in enforced)
    return KnownRefusal(error, version, now + wait_ms / 1000, events, from_memo=True)


def limit_refusal_known(
    *, caller: Caller, endpoint_class: EndpointClass, resource_type: str, cost: int = 1
) -> KnownRefusal | None:
    """The refusal limit_admit would give this request without asking Redis, or None;
    no I/O at all (None too when the caller's limits are not cached in this process).
    A refusal returned here is recorded (throttle event, metrics), like limit_admit's;
    record() it again for every further request it answers."""
    cached = profile_cache.peek(tenant=caller.tenant, client=caller.client, grant=caller.grant)
    if cached is None:
        return None
    profile, version = cached
    limits = limit_set_for(
        profile=profile, caller=caller, endpoint_class=endpoint_class, resource_type=resource_type
    )
    known = _known_refusal(caller, limits, version, endpoint_class, resource_type, max(1, cost))
    if known is not None:
        known.record()
    return known


def limit_admit(
    *, caller: Caller, endpoint_class: EndpointClass, resource_type: str, cost: int = 1
) -> Admission:
    """Admit the request (returns an Admission to release when done) or raise
    FhirError 429 (rate, daily quota, concurrency) / 503 (overload)."""
    cost = max(1, int(cost))
    limits, version = _limits_for(caller, endpoint_class, resource_type)
    known = _known_refusal(caller, limits, version, endpoint_class, resource_type, cost)
    if known is not None:
        known.record()
        raise known.error
    lease_id = os.urandom(16).hex()  # uuid4's randomness, without building a UUID
    decision, decider = limit_set_decide(limits=limits, lease_id=lease_id, cost=cost)
    if not decision.admitted and decider == Decider.REDIS and decision.version != version:
        # The limits changed since they were cached (e.g. the kill switch): a refusal
        # changed nothing in Redis, so decide again under the new ones.
        limits, version = _limits_for(caller, endpoint_class, resource_type)
        decision, decider = limit_set_decide(limits=limits, lease_id=lease_id, cost=cost)
    headers = ratelimit_headers(limits=limits, items=decision.items, decider=decider)

    everything: list[LimitItem | None] = [*limits.buckets, *limits.dailies, *limits.slots, None]
    decided = list(zip(everything, decision.items, strict=True))
    enforced, events = _throttled(caller, limits, endpoint_class, decided)
    _events_record(events)
    if decision.admitted:
        reported = "dry-run" if any(not r.ok for r in decision.items) else ""
        metrics.limiter_decisions.labels("admitted", reported).inc()
        return Admission(
            headers=headers,
            lease_id=lease_id,
            slot_keys=tuple(s.key for s in limits.slots),
            endpoint_class=endpoint_class,
            started=time.monotonic(),
            decider=decider,
            generation=decision.generation if decider == Decider.REDIS else None,
        )
    if decider == Decider.REDIS and decision.version == version:
        refusal_memo.learn(
            limits=limits,
            items=decision.items,
            version=version,
            cost=cost,
            asked_at=decision.asked_at,
        )
    error = _refusal(enforced, limits, endpoint_class, resource_type, decider, headers)
    metrics.limiter_decisions.labels("refused", str(error.issues[0].reason)).inc()
    raise error


def limit_release(*, admission: Admission, status: int) -> None:
    """Free the request's in-flight slots and feed its latency and outcome to the
    adaptive limit (queued: sent with the process's next admission, or by its flusher)."""
    elapsed_ms = (time.monotonic() - admission.started) * 1000
    bad = status >= 500 or elapsed_ms > LATENCY_TARGET_MS[admission.endpoint_class]
    lease_release(
        decider=admission.decider,
        lease_id=admission.lease_id,
        slot_keys=admission.slot_keys,
        bad=bad,
        started=admission.started,
    )


def limit_releases_flush() -> bool:
    """Send this process's queued releases now (tests; a worker about to exit); False if
    Redis could not take them (they stay queued, and their leases expire anyway)."""
    return releases_flush()


def limits_reset_local_state() -> None:
    """Start afresh as a new process would (tests, and after an admin bulk edit): queued
    releases are sent first, then cached profiles, remembered refusals, the Redis
    breaker's state and the local fallback's buckets are forgotten."""
    releases_flush()
    pending_releases.clear()
    profile_cache.clear()
    limit_sets_clear()
    refusal_memo.clear()
    deciders_reset()
