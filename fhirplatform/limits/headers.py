"""The RateLimit-Policy / RateLimit headers (IETF httpapi draft, structured fields) and
Retry-After: how every limit, the refusal budget included, tells a client where it stands."""

import math
import random

from fhirplatform.limits.codes import Decider
from fhirplatform.limits.deciders import ItemResult, fallback_share
from fhirplatform.limits.policies import DailyQuota, LimitSet, RateBucket


def seconds_until(ms: int) -> int:
    """Whole seconds, rounded up: a client told to wait must never come back early."""
    return max(0, math.ceil(ms / 1000))


def policy_item(*, policy: str, quota: int, window: int) -> str:
    """One entry of RateLimit-Policy: `quota` units per `window` seconds."""
    return f'"{policy}";q={quota};w={window}'


def state_item(*, policy: str, remaining: int, reset_seconds: int) -> str:
    """One entry of RateLimit: units left now, and seconds until the policy is full again."""
    return f'"{policy}";r={remaining};t={reset_seconds}'


def retry_after_seconds(*, wait_ms: int) -> int:
    """Whole seconds, never before the limit resets, plus jitter so refused clients spread out."""
    base = max(1, seconds_until(wait_ms))
    return base + random.randint(0, max(1, base // 10))


def bucket_quota(bucket: RateBucket, decider: Decider) -> int:
    """The quota a bucket had in this decision (the fallback enforces only a share of it)."""
    return fallback_share(bucket.quota) if decider == Decider.LOCAL else bucket.quota


def ratelimit_headers(
    *, limits: LimitSet, items: list[ItemResult], decider: Decider
) -> dict[str, str]:
    """The headers of one decision (`items`: its results, buckets then daily quotas first):
    every rate bucket, and the daily quotas when Redis decided (the fallback cannot count
    them)."""
    policies: list[str] = []
    states: list[str] = []
    windowed: list[RateBucket | DailyQuota] = [*limits.buckets]
    if decider == Decider.REDIS:
        windowed += limits.dailies
    for item, result in zip(windowed, items, strict=False):
        quota = bucket_quota(item, decider) if isinstance(item, RateBucket) else item.quota
        policies.append(policy_item(policy=item.policy, quota=quota, window=item.window))
        reset = result.reset_ms if result.ok else result.retry_ms
        states.append(
            state_item(
                policy=item.policy, remaining=result.remaining, reset_seconds=seconds_until(reset)
            )
        )
    return {"RateLimit-Policy": ", ".join(policies), "RateLimit": ", ".join(states)}
