"""Error vocabulary of the platform and the OperationOutcome every error body is."""

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from django.http import JsonResponse

FHIR_JSON = "application/fhir+json"
OUTCOME_SYSTEM = "https://fhirplatform.dev/CodeSystem/outcome-reason"


class IssueCode(StrEnum):
    """FHIR IssueType codes used by the platform (http://hl7.org/fhir/issue-type)."""

    INVALID = "invalid"
    STRUCTURE = "structure"
    REQUIRED = "required"
    VALUE = "value"
    SECURITY = "security"
    LOGIN = "login"
    EXPIRED = "expired"
    FORBIDDEN = "forbidden"
    SUSPENDED = "suspended"
    NOT_FOUND = "not-found"
    DELETED = "deleted"
    NOT_SUPPORTED = "not-supported"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    TOO_COSTLY = "too-costly"
    TOO_LONG = "too-long"
    THROTTLED = "throttled"
    TRANSIENT = "transient"
    EXCEPTION = "exception"
    PROCESSING = "processing"
    INFORMATIONAL = "informational"


class Severity(StrEnum):
    FATAL = "fatal"
    ERROR = "error"
    WARNING = "warning"
    INFORMATION = "information"


@dataclass
class Issue:
    code: IssueCode
    diagnostics: str
    severity: Severity = Severity.ERROR
    expression: list[str] = field(default_factory=list)
    reason: str | None = None  # machine-readable reason code for issue.details.coding

    def as_fhir(self) -> dict[str, Any]:
        issue: dict[str, Any] = {
            "severity": str(self.severity),
            "code": str(self.code),
            "diagnostics": self.diagnostics,
        }
        if self.reason:
            issue["details"] = {
                "coding": [{"system": OUTCOME_SYSTEM, "code": self.reason}],
                "text": self.reason,
            }
        if self.expression:
            issue["expression"] = list(self.expression)
        return issue


def operation_outcome(*issues: Issue) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [issue.as_fhir() for issue in issues]}


class FhirError(Exception):
    """Raised anywhere in the FHIR pipeline; rendered as an OperationOutcome with `status`."""

    def __init__(
        self,
        status: int,
        code: IssueCode,
        diagnostics: str,
        *,
        expression: list[str] | None = None,
        reason: str | None = None,
        headers: dict[str, str] | None = None,
        issues: list[Issue] | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.issues = issues or [
            Issue(code=code, diagnostics=diagnostics, expression=expression or [], reason=reason)
        ]
        self.headers = headers or {}

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(*self.issues)


class NotFound(FhirError):
    """The one 404: unknown tenant, other tenant's token, and missing resource all look alike."""

    def __init__(self) -> None:
        super().__init__(404, IssueCode.NOT_FOUND, "Resource not found")


def not_found() -> FhirError:
    return NotFound()


def fhir_error_json(error: FhirError) -> JsonResponse:
    """An error as a plain Django response, for code that answers outside DRF."""
    return JsonResponse(
        error.outcome(), status=error.status, content_type=FHIR_JSON, headers=error.headers
    )
