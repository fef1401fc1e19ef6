"""Every code of the limit engine, in one place: endpoint classes, scopes, reasons."""

from enum import StrEnum


class EndpointClass(StrEnum):
    READ = "read"
    SEARCH = "search"
    WRITE = "write"
    HISTORY = "history"
    BATCH = "batch"
    EXPORT = "export"
    EXPORT_POLL = "export-poll"


class LimitScope(StrEnum):
    """Who a bucket counts: names the policy in RateLimit headers and in diagnostics.

    There is no per-actor scope: a client-credentials token has no end-user actor, so
    the client is the caller."""

    TENANT = "tenant"
    CLIENT = "client"
    ENDPOINT = "endpoint"  # the client x tenant grant, per endpoint class
    RESOURCE = "resource"
    DAILY = "daily"
    CONCURRENCY = "concurrency"
    OVERLOAD = "overload"


class ThrottleReason(StrEnum):
    """Machine-readable reason rendered into OperationOutcome issue.details.coding."""

    TENANT_RATE = "tenant-rate"
    CLIENT_RATE = "client-rate"
    ENDPOINT_RATE = "endpoint-rate"
    RESOURCE_RATE = "resource-rate"
    CONCURRENCY = "concurrency"
    OVERLOAD = "overload"
    DAILY_QUOTA = "daily-quota"
    AUTH_REFUSALS = "auth-refusals"  # too many refused (401/403) requests from one address
    EXPORT_JOBS = "export-jobs"  # as many bulk exports queued or running as the plan allows
    EXPORT_POLL = "export-poll-early"  # an export's status polled before its Retry-After


SCOPE_REASON: dict[LimitScope, ThrottleReason] = {
    LimitScope.TENANT: ThrottleReason.TENANT_RATE,
    LimitScope.CLIENT: ThrottleReason.CLIENT_RATE,
    LimitScope.ENDPOINT: ThrottleReason.ENDPOINT_RATE,
    LimitScope.RESOURCE: ThrottleReason.RESOURCE_RATE,
    LimitScope.DAILY: ThrottleReason.DAILY_QUOTA,
    LimitScope.CONCURRENCY: ThrottleReason.CONCURRENCY,
    LimitScope.OVERLOAD: ThrottleReason.OVERLOAD,
}


class Decider(StrEnum):
    """Who decided an admission: the shared limiter in Redis, or this process's fallback."""

    REDIS = "redis"
    LOCAL = "local"
