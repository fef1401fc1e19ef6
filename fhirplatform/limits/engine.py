"""Rate-limit engine interface used by the FHIR pipeline."""

from dataclasses import dataclass, field
from enum import StrEnum

from tenants.tokens import Caller


class EndpointClass(StrEnum):
    READ = "read"
    SEARCH = "search"
    WRITE = "write"
    HISTORY = "history"
    BATCH = "batch"
    EXPORT = "export"
    EXPORT_POLL = "export-poll"


@dataclass
class Admission:
    """The outcome of admitting one request: headers to send, a slot to release."""

    headers: dict[str, str] = field(default_factory=dict)

    def release(self) -> None:
        return None


def limit_admit(
    *, caller: Caller, endpoint_class: EndpointClass, resource_type: str, cost: int = 1
) -> Admission:
    """Admit the request or raise FhirError(429/503). Placeholder until the limit engine lands."""
    plan = caller.grant.plan
    return Admission(headers={"RateLimit-Policy": f'"{endpoint_class}";q={plan.read_per_minute};w=60'})
