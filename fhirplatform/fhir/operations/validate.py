"""$validate: the platform's one validator (fhirplatform/fhir/validation.py) run on a
resource without storing it, its verdict as an OperationOutcome.

The specification answers 200 whenever validation was performed, valid or not; a 4xx
means the content could not be validated at all (no resource, an unsupported mode or
profile), so only those stay errors.
"""

from typing import Any

from fhirplatform.errors import FhirError, Issue, IssueCode, Severity, operation_outcome
from fhirplatform.fhir.validation import resource_validate

MODE_CREATE = "create"
MODE_UPDATE = "update"
_MODES = (MODE_CREATE, MODE_UPDATE)


class ValidationInput:
    """What a $validate request asks to be validated, and how."""

    def __init__(self, resource: Any, mode: str | None) -> None:
        self.resource = resource
        self.mode = mode


def _invalid_input(diagnostics: str, code: IssueCode = IssueCode.INVALID) -> FhirError:
    return FhirError(400, code, diagnostics)


def _parameter_value(parameter: dict[str, Any]) -> Any:
    for key, value in parameter.items():
        if key.startswith("value"):
            return value
    return None


def validation_input(body: Any, query_mode: str | None = None) -> ValidationInput:
    """The resource and mode of a $validate body: a resource, or a Parameters resource
    with a `resource` parameter (and optionally `mode`). `profile` is refused: this server
    validates against the core specification only, and saying "All OK" for a profile it
    never checked would mislead."""
    if not isinstance(body, dict):
        raise _invalid_input("The body must be a resource or a Parameters resource")
    if body.get("resourceType") != "Parameters":
        return ValidationInput(body, query_mode)
    parameters = body.get("parameter")
    if not isinstance(parameters, list) or not all(isinstance(p, dict) for p in parameters):
        raise _invalid_input("Parameters.parameter must be a list of parameters")
    resource: Any = None
    mode = query_mode
    for parameter in parameters:
        name = parameter.get("name")
        if name == "resource":
            resource = parameter.get("resource")
        elif name == "mode":
            mode = _parameter_value(parameter)
        elif name == "profile":
            raise _invalid_input(
                "Validation against a profile is not supported", IssueCode.NOT_SUPPORTED
            )
        else:
            raise _invalid_input(f"Unknown $validate parameter '{str(name)[:64]}'")
    if resource is None:
        raise _invalid_input("The Parameters need a 'resource' parameter holding the resource")
    return ValidationInput(resource, mode)


def mode_check(mode: str | None, *, allowed: tuple[str, ...]) -> None:
    """A mode this level validates in (delete, and a mode of the other level, are not)."""
    if mode is not None and mode not in allowed:
        known = mode in _MODES or mode == "delete"
        raise _invalid_input(
            f"$validate mode '{str(mode)[:32]}' is not supported here (use {', '.join(allowed)})",
            IssueCode.NOT_SUPPORTED if known else IssueCode.VALUE,
        )


def validation_outcome(
    *, content: Any, resource_type: str, logical_id: str | None = None
) -> dict[str, Any]:
    """The OperationOutcome of validating `content` as a `resource_type`: as a create, or
    as an update of `logical_id` (the body must then carry that id, as an update must).
    Nothing is stored."""
    if not isinstance(content, dict):
        raise _invalid_input("The resource to validate must be a JSON object")
    try:
        resource_validate(
            content=content,
            resource_type=resource_type,
            logical_id=logical_id,
            require_id=logical_id is not None,
        )
    except FhirError as invalid:
        return operation_outcome(*invalid.issues)
    return operation_outcome(
        Issue(code=IssueCode.INFORMATIONAL, severity=Severity.INFORMATION, diagnostics="All OK")
    )
