"""Which of a patient's Consents apply, and what their provisions say about one request.

R4 nesting: the root provision's type is the base rule and each nested provision is an
exception to its parent, narrowing within it. A provision that applies yields the
outcomes of its nested provisions that apply, or its own type when none does; a nested
provision is only looked at inside a parent that applies.

Reading fails safe at two levels. The structure (the Consent, its provision tree) must be
readable, or the whole Consent is ignored. Within a readable provision, a matching element
that cannot be read makes a deny provision apply and a permit provision not apply: a typo
can narrow what a patient allowed but never widen it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from consent.codes import (
    CLIENT_ID_SYSTEM,
    CONSENT_SCOPE_SYSTEM,
    PARTNER_SYSTEM,
    PATIENT_PRIVACY,
    PURPOSE_SYSTEM,
    RESOURCE_TYPE_SYSTEM,
    Effect,
)
from consent.periods import period_contains, period_edges

if TYPE_CHECKING:
    from consent.decision import ConsentRequest

# Deeper trees are refused as unreadable: no real Consent nests this far, and recursion
# on a hostile document must not raise.
MAX_DEPTH = 16


@dataclass(frozen=True)
class ProvisionOutcome:
    """The type of the deepest applicable provision on one path of one Consent, with what
    that path names explicitly (for the policy's explicit types and labels)."""

    effect: Effect
    consent_id: str | None
    consent_version: str | None
    names_type: bool  # a class on the path names the request's resource type
    named_labels: frozenset[str]  # the resource's labels a securityLabel on the path names


def consent_applies(*, consent: object, patient_id: str) -> bool:
    """An active patient-privacy Consent of this patient; anything unreadable is not."""
    if not isinstance(consent, Mapping):
        return False
    if consent.get("resourceType", "Consent") != "Consent" or consent.get("status") != "active":
        return False
    patient = consent.get("patient")
    reference = patient.get("reference") if isinstance(patient, Mapping) else None
    if not isinstance(reference, str) or not _names_patient(reference, patient_id):
        return False
    scope = consent.get("scope")
    codings = scope.get("coding") if isinstance(scope, Mapping) else None
    return isinstance(codings, list) and any(
        isinstance(coding, Mapping)
        and coding.get("system") == CONSENT_SCOPE_SYSTEM
        and coding.get("code") == PATIENT_PRIVACY
        for coding in codings
    )


def _names_patient(reference: str, patient_id: str) -> bool:
    if reference == f"Patient/{patient_id}":
        return True
    return reference.startswith(("http://", "https://")) and reference.endswith(
        f"/Patient/{patient_id}"
    )


def consent_outcomes(
    *, consent: Mapping[str, Any], request: ConsentRequest, now: datetime
) -> list[ProvisionOutcome]:
    """What one applicable Consent says about the request: one outcome per path that ends
    in an applicable provision; empty when none applies or the Consent cannot be read.

    A Consent without a provision is ignored: its rule would be in policyRule, which this
    engine does not interpret, so the tenant's policy decides instead."""
    root = consent.get("provision")
    if not isinstance(root, Mapping) or not _tree_readable(root, depth=0):
        return []
    meta = consent.get("meta")
    version = meta.get("versionId") if isinstance(meta, Mapping) else None
    identity = (_text(consent.get("id")), _text(version))
    return _provision_outcomes(
        root, request=request, now=now, identity=identity, path=(False, frozenset())
    )


def consent_labels(*, consent: Mapping[str, Any]) -> frozenset[str]:
    """Every security label code a provision of the Consent matches on: a decision on one
    resource depends on its labels only through these (and the policy's explicit ones).
    An unreadable securityLabel matches whatever the labels are, so it adds none."""
    return frozenset(
        code
        for provision in _provisions(consent)
        for code in _codes_or_empty(provision.get("securityLabel"), system=None)
    )


def consent_edges(*, consent: Mapping[str, Any]) -> list[datetime]:
    """The instants at which one of the Consent's provision periods starts or ends."""
    return [edge for p in _provisions(consent) for edge in period_edges(period=p.get("period"))]


def _provisions(consent: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Every provision of a readable tree, root first; none when the tree is unreadable."""
    root = consent.get("provision")
    if not isinstance(root, Mapping) or not _tree_readable(root, depth=0):
        return []
    found, pending = [], [root]
    while pending:
        provision = pending.pop()
        found.append(provision)
        pending.extend(provision.get("provision", []))
    return found


def _tree_readable(provision: object, *, depth: int) -> bool:
    """Whether every provision of the tree is an object and every nested list a list."""
    if not isinstance(provision, Mapping) or depth > MAX_DEPTH:
        return False
    nested = provision.get("provision", [])
    return isinstance(nested, list) and all(
        _tree_readable(child, depth=depth + 1) for child in nested
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _provision_outcomes(
    provision: Mapping[str, Any],
    *,
    request: ConsentRequest,
    now: datetime,
    identity: tuple[str | None, str | None],
    path: tuple[bool, frozenset[str]],
) -> list[ProvisionOutcome]:
    effect = provision_effect(provision=provision)
    if not provision_applies(provision=provision, effect=effect, request=request, now=now):
        return []
    names_type = path[0] or request.resource_type in _codes_or_empty(
        provision.get("class"), system=RESOURCE_TYPE_SYSTEM
    )
    named_labels = path[1] | (
        request.security_labels & _codes_or_empty(provision.get("securityLabel"), system=None)
    )
    outcomes: list[ProvisionOutcome] = []
    for child in provision.get("provision", []):  # a list of objects: _tree_readable
        outcomes += _provision_outcomes(
            child, request=request, now=now, identity=identity, path=(names_type, named_labels)
        )
    if outcomes:
        return outcomes
    return [ProvisionOutcome(effect, *identity, names_type, named_labels)]


def provision_effect(*, provision: Mapping[str, Any]) -> Effect:
    """The provision's type; a missing or unknown type denies, at the root or nested."""
    return Effect.PERMIT if provision.get("type") == Effect.PERMIT else Effect.DENY


def provision_applies(
    *, provision: Mapping[str, Any], effect: Effect, request: ConsentRequest, now: datetime
) -> bool:
    """Whether each matching element present on this one provision matches the request.

    provision.data and provision.dataPeriod are not read: they name particular resources
    or when the data was recorded, which a per-request decision on a type cannot check."""
    matchers: dict[str, Callable[[object], bool | None]] = {
        "period": lambda value: period_contains(period=value, now=now),
        "actor": lambda value: _actor_matches(value, request=request),
        "purpose": lambda value: _contains(_codes(value, system=PURPOSE_SYSTEM), request.purpose),
        "class": lambda value: _contains(
            _codes(value, system=RESOURCE_TYPE_SYSTEM), request.resource_type
        ),
        "securityLabel": lambda value: _overlaps(
            _codes(value, system=None), request.security_labels
        ),
    }
    for key, matches in matchers.items():
        if key not in provision:
            continue  # an absent element does not restrict
        matched = matches(provision[key])
        if matched is None:
            matched = effect is Effect.DENY
        if not matched:
            return False
    return True


def _contains(codes: frozenset[str] | None, code: str | None) -> bool | None:
    return None if codes is None else code in codes


def _overlaps(codes: frozenset[str] | None, labels: frozenset[str]) -> bool | None:
    return None if codes is None else bool(codes & labels)


def _codes(value: object, *, system: str | None) -> frozenset[str] | None:
    """The codes of a Coding list in `system` (any system when None); None when the list
    cannot be read. With a system to match, a Coding without one is unreadable: its code
    might mean anything."""
    if not isinstance(value, list) or not value:
        return None
    codes = set()
    for coding in value:
        if not isinstance(coding, Mapping):
            return None
        code, coding_system = coding.get("code"), coding.get("system")
        if not isinstance(code, str) or not code:
            return None
        if system is not None and not isinstance(coding_system, str):
            return None
        if system is None or coding_system == system:
            codes.add(code)
    return frozenset(codes)


def _codes_or_empty(value: object, *, system: str | None) -> frozenset[str]:
    return _codes(value, system=system) or frozenset()


def _actor_matches(value: object, *, request: ConsentRequest) -> bool | None:
    """Whether an actor names this client or its partner; actor.role is not matched.

    An actor that references someone else (a Practitioner, without an identifier) is
    readable and names nobody here."""
    if not isinstance(value, list) or not value:
        return None
    # An empty client id or partner slug names no one, even against an empty value.
    named = {
        (system, code)
        for system, code in (
            (CLIENT_ID_SYSTEM, request.client_id),
            (PARTNER_SYSTEM, request.partner),
        )
        if code
    }
    matched = False
    for actor in value:
        reference = actor.get("reference") if isinstance(actor, Mapping) else None
        if not isinstance(reference, Mapping):
            return None
        identifier = reference.get("identifier")
        if identifier is None:
            continue
        if not isinstance(identifier, Mapping):
            return None
        system, code = identifier.get("system"), identifier.get("value")
        if system in (CLIENT_ID_SYSTEM, PARTNER_SYSTEM) and not isinstance(code, str):
            return None
        matched = matched or (system, code) in named
    return matched
