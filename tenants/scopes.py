"""SMART system scopes (v1 and v2 syntax) and the FHIR interactions they permit.

v2: ``system/<Type|*>.<cruds subset, in order>`` e.g. ``system/Observation.rs``.
v1: ``system/<Type|*>.<read|write|*>`` e.g. ``system/Observation.read``.
Both are normalised to a set of permission letters per resource type.
"""

import re
from dataclasses import dataclass
from enum import StrEnum

from fhirplatform.errors import FhirError, IssueCode
from fhirplatform.resource_types import R4_RESOURCE_TYPES, TYPE_CHARS

WILDCARD = "*"
_V2_ORDER = "cruds"
_V1_PERMISSIONS = {"read": "rs", "write": "cud", "*": "cruds"}
_SCOPE_PATTERN = re.compile(rf"^system/(?P<type>\*|{TYPE_CHARS})\.(?P<perm>[a-z*]+)$")


class Interaction(StrEnum):
    READ = "read"
    VREAD = "vread"
    SEARCH = "search"
    HISTORY_INSTANCE = "history-instance"
    HISTORY_TYPE = "history-type"
    HISTORY_SYSTEM = "history-system"
    CREATE = "create"
    UPDATE = "update"
    PATCH = "patch"
    DELETE = "delete"
    EXPORT = "export"


# The permission letter each interaction needs, on the resource type it touches.
INTERACTION_PERMISSION: dict[Interaction, str] = {
    Interaction.READ: "r",
    Interaction.VREAD: "r",
    Interaction.HISTORY_INSTANCE: "r",
    Interaction.SEARCH: "s",
    Interaction.HISTORY_TYPE: "s",
    Interaction.HISTORY_SYSTEM: "s",
    Interaction.CREATE: "c",
    Interaction.UPDATE: "u",
    Interaction.PATCH: "u",
    Interaction.DELETE: "d",
    Interaction.EXPORT: "r",
}


class ScopeError(ValueError):
    """A scope string that is not a SMART system scope this platform serves."""


@dataclass(frozen=True)
class Scope:
    resource_type: str  # a resource type or "*"
    permissions: str  # subset of "cruds", in order
    text: str

    def allows(self, resource_type: str, letter: str) -> bool:
        return self.resource_type in (WILDCARD, resource_type) and letter in self.permissions


def scope_parse(text: str) -> Scope:
    match = _SCOPE_PATTERN.match(text)
    if not match:
        raise ScopeError(f"'{text}' is not a SMART system scope (e.g. system/Patient.rs)")
    resource_type, permission = match["type"], match["perm"]
    if resource_type != WILDCARD and resource_type not in R4_RESOURCE_TYPES:
        raise ScopeError(f"'{text}' names an unknown resource type '{resource_type}'")
    if permission in _V1_PERMISSIONS:
        return Scope(resource_type, _V1_PERMISSIONS[permission], text)
    if _is_ordered_subset(permission):
        return Scope(resource_type, permission, text)
    raise ScopeError(
        f"'{text}' has permissions '{permission}': use read/write/* (v1) "
        "or letters of 'cruds' in that order (v2)"
    )


def scopes_parse(text: str) -> list[Scope]:
    """Parse a space-separated scope string; raises ScopeError naming the first bad scope."""
    words = text.split()
    if not words:
        raise ScopeError("at least one scope is required")
    return [scope_parse(word) for word in words]


def scopes_allow(scopes: list[Scope], resource_type: str, interaction: Interaction) -> bool:
    letter = INTERACTION_PERMISSION[interaction]
    return any(scope.allows(resource_type, letter) for scope in scopes)


def scope_require(*, scopes: list[Scope], resource_type: str, interaction: Interaction) -> None:
    """The one missing-scope refusal: 403 naming the scope the interaction needs.

    Used by the pipeline for the request and by Bundles for each entry."""
    if not scopes_allow(scopes, resource_type, interaction):
        needed = required_scope_text(resource_type, interaction)
        raise FhirError(
            403,
            IssueCode.FORBIDDEN,
            f"Missing scope {needed} for {interaction} on {resource_type}",
        )


def scopes_intersect(requested: list[Scope], granted: list[Scope]) -> list[Scope]:
    """The requested scopes narrowed to what the grant allows (SMART: never widen)."""
    result: list[Scope] = []
    for want in requested:
        for have in granted:
            # A wildcard on either side meets the other side's type.
            if want.resource_type != WILDCARD and have.resource_type not in (
                WILDCARD,
                want.resource_type,
            ):
                continue
            letters = "".join(
                p for p in _V2_ORDER if p in want.permissions and p in have.permissions
            )
            if not letters:
                continue
            resource_type = (
                want.resource_type if want.resource_type != WILDCARD else have.resource_type
            )
            result.append(Scope(resource_type, letters, f"system/{resource_type}.{letters}"))
    return _dedupe(result)


def scopes_text(scopes: list[Scope]) -> str:
    return " ".join(scope.text for scope in scopes)


def required_scope_text(resource_type: str, interaction: Interaction) -> str:
    return f"system/{resource_type}.{INTERACTION_PERMISSION[interaction]}"


def _is_ordered_subset(permission: str) -> bool:
    position = -1
    for letter in permission:
        index = _V2_ORDER.find(letter)
        if index <= position:
            return False
        position = index
    return bool(permission)


def _dedupe(scopes: list[Scope]) -> list[Scope]:
    seen: set[str] = set()
    unique = []
    for scope in scopes:
        if scope.text not in seen:
            seen.add(scope.text)
            unique.append(scope)
    return unique
