"""Prometheus metrics of the limit engine (served by the platform's /metrics)."""

from prometheus_client import Counter, Gauge

limiter_fallback = Gauge(
    "fhirplatform_limiter_fallback",
    "1 while this process limits locally because Redis is unreachable",
    multiprocess_mode="livemax",
)
limiter_fallback_decisions = Counter(
    "fhirplatform_limiter_fallback_decisions",
    "Admission decisions taken by the local fallback limiter",
)
limiter_redis_errors = Counter(
    "fhirplatform_limiter_redis_errors", "Redis errors seen by the limit engine"
)
limiter_decisions = Counter(
    "fhirplatform_limiter_decisions",
    "Admission decisions by outcome and reason",
    ["outcome", "reason"],
)
adaptive_limit = Gauge(
    "fhirplatform_limiter_adaptive_limit",
    "Platform-wide adaptive in-flight limit last seen by this process",
    multiprocess_mode="livemax",
)
limiter_memo_refusals = Counter(
    "fhirplatform_limiter_memo_refusals",
    "Refusals answered in process from a remembered Redis refusal, without a Redis call",
)
limiter_releases_dropped = Counter(
    "fhirplatform_limiter_releases_dropped",
    "Queued slot releases dropped unsent while Redis was unreachable (their leases expire)",
)
