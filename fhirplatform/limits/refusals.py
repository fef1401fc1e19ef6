"""Budget for refused FHIR requests (401/403), counted per client address.

A refused request has no trusted tenant or client, so it never touches a tenant's
quota; instead each address gets a small budget of refusals. It bounds a client
retrying with an expired token in a loop and token guessing, and it gives those
responses the same RateLimit headers every other FHIR response carries.
"""

import logging

import redis
from django.conf import settings
from django.http import HttpRequest

# _split_rate is django-ratelimit's own parser of "120/m"; reused so both read rates alike.
from django_ratelimit.core import _split_rate, get_usage

from fhirplatform.errors import FhirError, IssueCode
from fhirplatform.limits.codes import ThrottleReason
from fhirplatform.limits.headers import policy_item, retry_after_seconds, state_item

logger = logging.getLogger(__name__)

POLICY = "refused-ip"


def refusal_charge(*, request: HttpRequest) -> dict[str, str]:
    """Count one refusal for the caller's address; headers to send, or 429 past the budget."""
    try:
        usage = get_usage(
            request,
            group="fhir-refusals",
            key="ip",
            rate=settings.LIMITS_REFUSALS_PER_IP,
            increment=True,
        )
    except redis.RedisError:
        logger.warning("refusal budget unavailable: shared limiter store unreachable")
        return {}
    if usage is None or usage["time_left"] < 0:  # disabled, or the counter was unreadable
        return {}
    limit, window = _split_rate(settings.LIMITS_REFUSALS_PER_IP)
    count, time_left = usage["count"], int(usage["time_left"])
    headers = {
        "RateLimit-Policy": policy_item(policy=POLICY, quota=limit, window=window),
        "RateLimit": state_item(
            policy=POLICY, remaining=max(limit - count, 0), reset_seconds=time_left
        ),
    }
    if usage["should_limit"]:
        retry_after = retry_after_seconds(wait_ms=max(time_left, 1) * 1000)
        raise FhirError(
            429,
            IssueCode.THROTTLED,
            f"Too many refused requests from this address (policy '{POLICY}', {limit} per "
            f"{window} s); fix the credentials, then retry after {retry_after} s",
            reason=str(ThrottleReason.AUTH_REFUSALS),
            headers=headers | {"Retry-After": str(retry_after)},
        )
    return headers
