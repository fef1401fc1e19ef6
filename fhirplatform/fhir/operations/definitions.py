"""The operations this server offers: one table read by the URL routes, the
CapabilityStatement and the answer to an operation it does not offer."""

from enum import StrEnum
from typing import NamedTuple

from fhirplatform.errors import FhirError, IssueCode


class Level(StrEnum):
    SYSTEM = "system"
    TYPE = "type"
    INSTANCE = "instance"


class Operation(NamedTuple):
    name: str  # as it follows `$` in the URL
    definition: str  # the canonical URL of the specification's OperationDefinition
    resource_types: tuple[str, ...]  # () for every type
    levels: frozenset[Level]


VALIDATE = Operation(
    "validate",
    "http://hl7.org/fhir/OperationDefinition/Resource-validate",
    (),
    frozenset({Level.TYPE, Level.INSTANCE}),
)
EVERYTHING = Operation(
    "everything",
    "http://hl7.org/fhir/OperationDefinition/Patient-everything",
    ("Patient",),
    frozenset({Level.INSTANCE}),
)
LASTN = Operation(
    "lastn",
    "http://hl7.org/fhir/OperationDefinition/Observation-lastn",
    ("Observation",),
    frozenset({Level.TYPE}),
)
# Bulk Data IG v2 (fhirplatform/fhir/export): one operation name at three levels.
_BULK = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition"
EXPORT_SYSTEM = Operation("export", f"{_BULK}/export", (), frozenset({Level.SYSTEM}))
EXPORT_PATIENT = Operation(
    "export", f"{_BULK}/patient-export", ("Patient",), frozenset({Level.TYPE})
)
EXPORT_GROUP = Operation("export", f"{_BULK}/group-export", ("Group",), frozenset({Level.INSTANCE}))
BULK_DATA_CAPABILITIES = "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"
OPERATIONS: tuple[Operation, ...] = (
    VALIDATE,
    EVERYTHING,
    LASTN,
    EXPORT_SYSTEM,
    EXPORT_PATIENT,
    EXPORT_GROUP,
)


def operation_unsupported(name: str, level: Level, resource_type: str | None = None) -> FhirError:
    """The one answer to `$name` where this server does not offer it: a 400 naming the
    operation, never the 404 a missing resource gets (the request is not about one)."""
    where = f"on {resource_type}" if resource_type else "at the system level"
    if level is Level.INSTANCE and resource_type:
        where = f"on a {resource_type} instance"
    offered = ", ".join(
        f"${op.name}"
        for op in OPERATIONS
        if level in op.levels and (not op.resource_types or resource_type in op.resource_types)
    )
    return FhirError(
        400,
        IssueCode.NOT_SUPPORTED,
        f"Operation ${name[:64]} is not supported {where}"
        + (f" (supported here: {offered})" if offered else ""),
    )
