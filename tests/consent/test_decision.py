"""The consent decision as a table: each row a policy, a request and the patient's
Consents, and the decision expected. Pure: no database, no settings.

The cast: client app-a of partner acme asks, for purpose TREAT, about an Observation of
patient p1; app-b of partner globex is someone else. Rows change only what they test."""

import copy
import random
from dataclasses import FrozenInstanceError, dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pytest

from consent.codes import (
    CLIENT_ID_SYSTEM,
    CONSENT_SCOPE_SYSTEM,
    PARTNER_SYSTEM,
    PURPOSE_SYSTEM,
    RESOURCE_TYPE_SYSTEM,
    DecisionBasis,
    DeniedAnswer,
    Effect,
)
from consent.decision import ConsentPolicy, ConsentRequest, Decision, consent_decide
from consent.periods import datetime_span

NOW = datetime(2026, 5, 15, 12, 0, tzinfo=UTC)
PERMIT, DENY = Effect.PERMIT, Effect.DENY
CONSENT = DecisionBasis.CONSENT
DEFAULT = DecisionBasis.POLICY_DEFAULT
PURPOSE = DecisionBasis.POLICY_PURPOSE
EXPLICIT = DecisionBasis.POLICY_EXPLICIT

Json = dict[str, Any]


# --- builders: a Consent reads as its provisions -------------------------------------


def client(client_id: str, role: str = "IRCP") -> Json:
    return {
        "role": {"coding": [{"code": role}]},
        "reference": {"identifier": {"system": CLIENT_ID_SYSTEM, "value": client_id}},
    }


def partner(slug: str) -> Json:
    return {"reference": {"identifier": {"system": PARTNER_SYSTEM, "value": slug}}}


def purposes(*codes: str) -> list[Json]:
    return [{"system": PURPOSE_SYSTEM, "code": code} for code in codes]


def classes(*types: str) -> list[Json]:
    return [{"system": RESOURCE_TYPE_SYSTEM, "code": code} for code in types]


def labels(*codes: str) -> list[Json]:
    system = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
    return [{"system": system, "code": code} for code in codes]


def rule(
    type_: str | None,
    *nested: Json,
    actor: list[Json] | None = None,
    purpose: list[Json] | None = None,
    class_: list[Json] | None = None,
    label: list[Json] | None = None,
    period: Any = None,
    **raw: Any,
) -> Json:
    """One provision; `raw` sets elements as given (malformed ones included)."""
    provision: Json = {} if type_ is None else {"type": type_}
    elements = {
        "actor": actor,
        "purpose": purpose,
        "class": class_,
        "securityLabel": label,
        "period": period,
    }
    provision.update({key: value for key, value in elements.items() if value is not None})
    if nested:
        provision["provision"] = list(nested)
    provision.update(raw)
    return provision


def permit(*nested: Json, **elements: Any) -> Json:
    return rule("permit", *nested, **elements)


def deny(*nested: Json, **elements: Any) -> Json:
    return rule("deny", *nested, **elements)


def consent(
    provision: Any,
    *,
    id: str = "c1",
    version: str | None = "3",
    status: str = "active",
    patient: str = "Patient/p1",
    scope: str = "patient-privacy",
    scope_system: str = CONSENT_SCOPE_SYSTEM,
) -> Json:
    document: Json = {
        "resourceType": "Consent",
        "id": id,
        "status": status,
        "scope": {"coding": [{"system": scope_system, "code": scope}]},
        "patient": {"reference": patient},
        "provision": provision,
    }
    if version is not None:
        document["meta"] = {"versionId": version}
    return document


REQUEST = ConsentRequest(
    tenant="provider-a",
    client_id="app-a",
    partner="acme",
    purpose="TREAT",
    patient_id="p1",
    resource_type="Observation",
)


@dataclass(frozen=True)
class Expect:
    effect: Effect
    basis: DecisionBasis
    consent_id: str | None = None  # the deciding Consent


DEFAULT_PERMITS = Expect(PERMIT, DEFAULT)
DEFAULT_DENIES = Expect(DENY, DEFAULT)
PURPOSE_DENIES = Expect(DENY, PURPOSE)
EXPLICIT_DENIES = Expect(DENY, EXPLICIT)
C1_PERMITS = Expect(PERMIT, CONSENT, "c1")
C1_DENIES = Expect(DENY, CONSENT, "c1")
C2_PERMITS = Expect(PERMIT, CONSENT, "c2")
C2_DENIES = Expect(DENY, CONSENT, "c2")


@dataclass(frozen=True)
class Row:
    consents: list[Any]
    expect: Expect
    policy: dict[str, Any]
    request: dict[str, Any]


def row(
    id: str,
    consents: list[Any],
    expect: Expect,
    policy: dict[str, Any] | None = None,
    /,
    **request: Any,
) -> Any:
    """One line of the table: `policy` holds ConsentPolicy fields, `request` changes REQUEST."""
    return pytest.param(Row(consents, expect, policy or {}, request), id=id)


def codes(*values: str) -> frozenset[str]:
    return frozenset(values)


def period(start: Any = None, end: Any = None) -> Json:
    return {key: value for key, value in (("start", start), ("end", end)) if value is not None}


PERMIT_ALL = consent(permit())
DENY_ALL = consent(deny())
# Policies the rows name: STRICT makes a permit visible (only a Consent can permit).
STRICT = {"default": DENY}
TREAT_ONLY = {"allowed_purposes": codes("TREAT")}
OBSERVATION_EXPLICIT = {"explicit_types": codes("Observation")}
# Requests the rows name.
ORGANIZATION = {"patient_id": None, "resource_type": "Organization"}
APP_B = {"client_id": "app-b", "partner": "globex"}


# --- the table -------------------------------------------------------------------------

POLICY_ROWS = [
    row("no consent, tenant default permit -> permit", [], DEFAULT_PERMITS),
    row("no consent, tenant default deny -> deny", [], DEFAULT_DENIES, STRICT),
    row(
        "permit consent, purpose HRESCH outside {TREAT} -> deny purpose",
        [PERMIT_ALL],
        PURPOSE_DENIES,
        TREAT_ONLY,
        purpose="HRESCH",
    ),
    row(
        "permit consent, no purpose with allowed {TREAT} -> deny purpose",
        [PERMIT_ALL],
        PURPOSE_DENIES,
        TREAT_ONLY,
        purpose=None,
    ),
    row(
        "permit consent, TREAT in {TREAT, HPAYMT} -> permit",
        [PERMIT_ALL],
        C1_PERMITS,
        {**STRICT, "allowed_purposes": codes("TREAT", "HPAYMT")},
    ),
    row("no purpose, any purpose allowed -> default permit", [], DEFAULT_PERMITS, purpose=None),
    row(
        "Organization, purpose HMARKT outside {TREAT} -> deny purpose",
        [],
        PURPOSE_DENIES,
        TREAT_ONLY,
        purpose="HMARKT",
        **ORGANIZATION,
    ),
    row(
        "partner acme overrides tenant permit with deny -> deny",
        [],
        DEFAULT_DENIES,
        {"partner_defaults": {"acme": DENY}},
    ),
    row(
        "client app-a permit wins over partner acme deny -> permit",
        [],
        DEFAULT_PERMITS,
        {**STRICT, "partner_defaults": {"acme": DENY}, "client_defaults": {"app-a": PERMIT}},
    ),
    row(
        "client app-a deny wins over partner acme permit -> deny",
        [],
        DEFAULT_DENIES,
        {"partner_defaults": {"acme": PERMIT}, "client_defaults": {"app-a": DENY}},
    ),
    row(
        "override for client app-b only, app-a gets partner override -> permit",
        [],
        DEFAULT_PERMITS,
        {**STRICT, "partner_defaults": {"acme": PERMIT}, "client_defaults": {"app-b": DENY}},
    ),
    row(
        "override for partner globex only, acme gets tenant default -> permit",
        [],
        DEFAULT_PERMITS,
        {"partner_defaults": {"globex": DENY}},
    ),
    row(
        "consent for another client does not apply, partner override decides -> deny",
        [consent(permit(actor=[client("app-b")]))],
        DEFAULT_DENIES,
        {"partner_defaults": {"acme": DENY}},
    ),
]

NO_PATIENT_ROWS = [
    row(
        "Organization, deny consents are not read, tenant permit -> permit",
        [DENY_ALL],
        DEFAULT_PERMITS,
        **ORGANIZATION,
    ),
    row(
        "Practitioner, permit consents are not read, tenant deny -> deny",
        [PERMIT_ALL],
        DEFAULT_DENIES,
        STRICT,
        patient_id=None,
        resource_type="Practitioner",
    ),
    row(
        "Organization, client override deny over partner permit -> deny",
        [],
        DEFAULT_DENIES,
        {"partner_defaults": {"acme": PERMIT}, "client_defaults": {"app-a": DENY}},
        **ORGANIZATION,
    ),
    row(
        "Organization is an explicit type, default permit -> deny explicit",
        [PERMIT_ALL],
        EXPLICIT_DENIES,
        {"explicit_types": codes("Organization")},
        **ORGANIZATION,
    ),
    row(
        "Organization labelled R, R explicit, default permit -> deny explicit",
        [],
        EXPLICIT_DENIES,
        {"explicit_labels": codes("R")},
        security_labels=codes("R"),
        **ORGANIZATION,
    ),
    row(
        "Organization explicit, default deny -> deny by default",
        [],
        DEFAULT_DENIES,
        {**STRICT, "explicit_types": codes("Organization")},
        **ORGANIZATION,
    ),
]

FILTER_ROWS = [
    *(
        row(
            f"deny consent {status} is ignored -> default permit",
            [consent(deny(), status=status)],
            DEFAULT_PERMITS,
        )
        for status in ("draft", "proposed", "rejected", "inactive", "entered-in-error")
    ),
    row("deny consent active -> deny", [DENY_ALL], C1_DENIES),
    row(
        "deny consent of Patient/p2 is ignored -> default permit",
        [consent(deny(), patient="Patient/p2")],
        DEFAULT_PERMITS,
    ),
    row(
        "deny consent of .../Patient/p10 is ignored -> default permit",
        [consent(deny(), patient="https://fhir.example/r4/Patient/p10")],
        DEFAULT_PERMITS,
    ),
    row(
        "deny consent with full URL .../Patient/p1 -> deny",
        [consent(deny(), patient="https://fhir.example/r4/Patient/p1")],
        C1_DENIES,
    ),
    row(
        "deny consent of Group/g1/Patient/p1 (not a URL) is ignored -> default permit",
        [consent(deny(), patient="Group/g1/Patient/p1")],
        DEFAULT_PERMITS,
    ),
    *(
        row(
            f"deny consent of scope {scope} is ignored -> default permit",
            [consent(deny(), scope=scope)],
            DEFAULT_PERMITS,
        )
        for scope in ("research", "adr", "treatment")
    ),
    row(
        "deny consent with patient-privacy in another system is ignored -> default permit",
        [consent(deny(), scope_system="http://example.org/scope")],
        DEFAULT_PERMITS,
    ),
    row(
        "deny consent of another resourceType is ignored -> default permit",
        [{**DENY_ALL, "resourceType": "Contract"}],
        DEFAULT_PERMITS,
    ),
    row(
        "patient-privacy among several scope codings -> deny",
        [
            {
                **DENY_ALL,
                "scope": {
                    "coding": [
                        {"system": "http://example.org/scope", "code": "x"},
                        {"system": CONSENT_SCOPE_SYSTEM, "code": "patient-privacy"},
                    ]
                },
            }
        ],
        C1_DENIES,
    ),
    row(
        "consent without provision relies on policyRule, not read -> default deny",
        [{key: value for key, value in PERMIT_ALL.items() if key != "provision"}],
        DEFAULT_DENIES,
        STRICT,
    ),
]

ACTOR_ROWS = [
    row(
        "deny consent for this client, TREAT, Observation -> deny",
        [
            consent(
                deny(
                    actor=[client("app-a")],
                    purpose=purposes("TREAT"),
                    class_=classes("Observation"),
                )
            )
        ],
        C1_DENIES,
    ),
    row(
        "deny consent for this client's partner -> deny",
        [consent(deny(actor=[partner("acme")]))],
        C1_DENIES,
    ),
    row(
        "deny consent for another client -> default permit",
        [consent(deny(actor=[client("app-b")]))],
        DEFAULT_PERMITS,
    ),
    row(
        "deny consent for another partner -> default permit",
        [consent(deny(actor=[partner("globex")]))],
        DEFAULT_PERMITS,
    ),
    row(
        "client-id identifier holding the partner slug names no one -> default permit",
        [
            consent(
                deny(
                    actor=[
                        {"reference": {"identifier": {"system": CLIENT_ID_SYSTEM, "value": "acme"}}}
                    ]
                )
            )
        ],
        DEFAULT_PERMITS,
    ),
    row(
        "actor role is not matched: role PRCP still names app-a -> permit",
        [consent(permit(actor=[client("app-a", role="PRCP")]))],
        C1_PERMITS,
        STRICT,
    ),
    row(
        "one of several actors names the client -> permit",
        [consent(permit(actor=[client("app-b"), partner("acme")]))],
        C1_PERMITS,
        STRICT,
    ),
    row(
        "actor referencing a Practitioner names no client -> default deny",
        [consent(permit(actor=[{"reference": {"reference": "Practitioner/dr1"}}]))],
        DEFAULT_DENIES,
        STRICT,
    ),
]

ELEMENT_ROWS = [
    row(
        "deny HRESCH, request TREAT -> default permit",
        [consent(deny(purpose=purposes("HRESCH")))],
        DEFAULT_PERMITS,
    ),
    row(
        "deny HRESCH, request HRESCH -> deny",
        [consent(deny(purpose=purposes("HRESCH")))],
        C1_DENIES,
        purpose="HRESCH",
    ),
    row(
        "permit TREAT in another code system -> default deny",
        [consent(permit(purpose=[{"system": "http://example.org/why", "code": "TREAT"}]))],
        DEFAULT_DENIES,
        STRICT,
    ),
    row(
        "permit TREAT, request without purpose -> default deny",
        [consent(permit(purpose=purposes("TREAT")))],
        DEFAULT_DENIES,
        STRICT,
        purpose=None,
    ),
    row(
        "deny class Observation, Observation -> deny",
        [consent(deny(class_=classes("Observation")))],
        C1_DENIES,
    ),
    row(
        "deny class Observation, Condition -> default permit",
        [consent(deny(class_=classes("Observation")))],
        DEFAULT_PERMITS,
        resource_type="Condition",
    ),
    row(
        "permit class Observation in another code system -> default deny",
        [consent(permit(class_=[{"system": "http://example.org/types", "code": "Observation"}]))],
        DEFAULT_DENIES,
        STRICT,
    ),
    row(
        "deny label PSY, resource labelled PSY and N -> deny",
        [consent(deny(label=labels("PSY")))],
        C1_DENIES,
        security_labels=codes("PSY", "N"),
    ),
    row(
        "deny label PSY, unlabelled resource -> default permit",
        [consent(deny(label=labels("PSY")))],
        DEFAULT_PERMITS,
    ),
    row(
        "deny labels PSY or ETH, resource labelled ETH -> deny",
        [consent(deny(label=labels("PSY", "ETH")))],
        C1_DENIES,
        security_labels=codes("ETH"),
    ),
    row(
        "permit with data and dataPeriod (not read) -> permit",
        [
            consent(
                permit(
                    data=[{"meaning": "instance", "reference": {"reference": "Observation/o9"}}],
                    dataPeriod={"start": "2030"},
                )
            )
        ],
        C1_PERMITS,
        STRICT,
    ),
]


def permit_during(start: Any = None, end: Any = None) -> list[Json]:
    return [consent(permit(period=period(start, end)))]


def deny_during(start: Any = None, end: Any = None) -> list[Json]:
    return [consent(deny(period=period(start, end)))]


# NOW is 2026-05-15T12:00:00Z.
PERIOD_ROWS = [
    row(
        "permit from now (start inclusive) -> permit",
        permit_during("2026-05-15T12:00:00Z"),
        C1_PERMITS,
        STRICT,
    ),
    row(
        "permit ending now (end exclusive) -> default deny",
        permit_during(end="2026-05-15T12:00:00Z"),
        DEFAULT_DENIES,
        STRICT,
    ),
    row(
        "permit starting a microsecond after now -> default deny",
        permit_during("2026-05-15T12:00:00.000001Z"),
        DEFAULT_DENIES,
        STRICT,
    ),
    row(
        "permit open start, future end -> permit",
        permit_during(end="2027-01-01T00:00:00Z"),
        C1_PERMITS,
        STRICT,
    ),
    row("permit past start, open end -> permit", permit_during("2020-01-01"), C1_PERMITS, STRICT),
    row("permit empty period -> permit", [consent(permit(period={}))], C1_PERMITS, STRICT),
    row(
        "permit ending 2026 (the whole year) -> permit",
        permit_during(end="2026"),
        C1_PERMITS,
        STRICT,
    ),
    row(
        "permit ending 2026-05 (all of May) -> permit",
        permit_during(end="2026-05"),
        C1_PERMITS,
        STRICT,
    ),
    row(
        "permit ending 2026-04 -> default deny",
        permit_during(end="2026-04"),
        DEFAULT_DENIES,
        STRICT,
    ),
    row(
        "permit ending 2026-05-15 (that whole day) -> permit",
        permit_during(end="2026-05-15"),
        C1_PERMITS,
        STRICT,
    ),
    row(
        "permit starting 2026-06 -> default deny", permit_during("2026-06"), DEFAULT_DENIES, STRICT
    ),
    row("permit starting 2026-05 -> permit", permit_during("2026-05"), C1_PERMITS, STRICT),
    row(
        "deny starting 12:00 with no zone (UTC) -> deny",
        deny_during("2026-05-15T12:00:00"),
        C1_DENIES,
    ),
    row(
        "deny ending 13:00+02:00 (11:00 UTC) -> default permit",
        deny_during(end="2026-05-15T13:00:00+02:00"),
        DEFAULT_PERMITS,
    ),
    row(
        "deny starting 08:00-05:00 (13:00 UTC) -> default permit",
        deny_during("2026-05-15T08:00:00-05:00"),
        DEFAULT_PERMITS,
    ),
    row("deny with unparseable start still denies -> deny", deny_during("soon"), C1_DENIES),
    row(
        "deny with impossible date 2026-02-30 still denies -> deny",
        deny_during(end="2026-02-30"),
        C1_DENIES,
    ),
    row(
        "deny with end before start (unreadable) still denies -> deny",
        deny_during("2026-06", "2026-01"),
        C1_DENIES,
    ),
    row(
        "permit with unparseable end does not permit -> default deny",
        permit_during(end="next year"),
        DEFAULT_DENIES,
        STRICT,
    ),
    row(
        "permit with a period that is a string does not permit -> default deny",
        [consent(permit(period="2026"))],
        DEFAULT_DENIES,
        STRICT,
    ),
    row(
        "permit with a numeric start does not permit -> default deny",
        permit_during(2026),
        DEFAULT_DENIES,
        STRICT,
    ),
    row(
        "permit of 2026-05 before a deny of 2026-06 -> permit",
        [
            consent(permit(period=period("2026-05"))),
            consent(deny(period=period("2026-06")), id="c2"),
        ],
        C1_PERMITS,
        STRICT,
    ),
]

COMBINE_ROWS = [
    row(
        "permit c1 then deny Observation c2 -> deny by c2",
        [
            consent(permit(actor=[client("app-a")])),
            consent(deny(class_=classes("Observation")), id="c2"),
        ],
        C2_DENIES,
    ),
    row(
        "deny Observation c2 then permit c1 -> deny by c2",
        [consent(deny(class_=classes("Observation")), id="c2"), PERMIT_ALL],
        C2_DENIES,
    ),
    row(
        "two denies -> deny by the first given",
        [consent(deny(), id="c2"), consent(deny(), id="c1")],
        C2_DENIES,
    ),
    row(
        "two permits -> permit by the first given",
        [consent(permit(), id="c2"), PERMIT_ALL],
        C2_PERMITS,
        STRICT,
    ),
    row(
        "deny of another patient and a permit -> permit",
        [consent(deny(), id="c2", patient="Patient/p2"), PERMIT_ALL],
        C1_PERMITS,
        STRICT,
    ),
]

NESTED_ROWS = [
    row(
        "permit root, deny exception Observation: Observation -> deny",
        [consent(permit(deny(class_=classes("Observation"))))],
        C1_DENIES,
    ),
    row(
        "permit root, deny exception Observation: Condition -> permit",
        [consent(permit(deny(class_=classes("Observation"))))],
        C1_PERMITS,
        STRICT,
        resource_type="Condition",
    ),
    row(
        "deny root, permit exception for partner acme: app-a -> permit",
        [consent(deny(permit(actor=[partner("acme")])))],
        C1_PERMITS,
    ),
    row(
        "deny root, permit exception for partner acme: globex's app-b -> deny",
        [consent(deny(permit(actor=[partner("acme")])))],
        C1_DENIES,
        **APP_B,
    ),
    row(
        "deny root, permit exceptions for globex and acme: app-a -> permit",
        [consent(deny(permit(actor=[partner("globex")]), permit(actor=[partner("acme")])))],
        C1_PERMITS,
    ),
    row(
        "permit root for app-b only: its exception for acme never applies -> default deny",
        [consent(permit(permit(actor=[partner("acme")]), actor=[client("app-b")]))],
        DEFAULT_DENIES,
        STRICT,
    ),
    row(
        "permit root, a permit and a deny exception both apply -> deny",
        [consent(permit(permit(purpose=purposes("TREAT")), deny(class_=classes("Observation"))))],
        C1_DENIES,
    ),
    row(
        "permit, deny Observation, permit Observation for TREAT: TREAT -> permit",
        [consent(permit(deny(permit(purpose=purposes("TREAT")), class_=classes("Observation"))))],
        C1_PERMITS,
        STRICT,
    ),
    row(
        "permit, deny Observation, permit Observation for TREAT: HPAYMT -> deny",
        [consent(permit(deny(permit(purpose=purposes("TREAT")), class_=classes("Observation"))))],
        C1_DENIES,
        purpose="HPAYMT",
    ),
    row(
        "deny root, permit exception expired -> deny",
        [consent(deny(permit(period=period(end="2026-01"))))],
        C1_DENIES,
    ),
    row("root provision without type -> deny", [consent(rule(None))], C1_DENIES),
    row("root provision of unknown type -> deny", [consent(rule("maybe"))], C1_DENIES),
    row(
        "permit root, nested exception without type -> deny",
        [consent(permit(rule(None, class_=classes("Observation"))))],
        C1_DENIES,
    ),
]

EXPLICIT_ROWS = [
    row(
        "Observation explicit, no consent, default permit -> deny explicit",
        [],
        EXPLICIT_DENIES,
        OBSERVATION_EXPLICIT,
    ),
    row(
        "Observation explicit, no consent, default deny -> deny by default",
        [],
        DEFAULT_DENIES,
        {**STRICT, **OBSERVATION_EXPLICIT},
    ),
    row(
        "Observation explicit, permit naming no class -> deny explicit",
        [PERMIT_ALL],
        EXPLICIT_DENIES,
        OBSERVATION_EXPLICIT,
    ),
    row(
        "Observation explicit, permit class Observation -> permit",
        [consent(permit(class_=classes("Observation")))],
        C1_PERMITS,
        OBSERVATION_EXPLICIT,
    ),
    row(
        "Observation explicit, class on the deny root, permit exception for acme -> permit",
        [consent(deny(permit(actor=[partner("acme")]), class_=classes("Observation")))],
        C1_PERMITS,
        OBSERVATION_EXPLICIT,
    ),
    row(
        "Observation explicit, deny class Observation -> deny by consent",
        [consent(deny(class_=classes("Observation")))],
        C1_DENIES,
        OBSERVATION_EXPLICIT,
    ),
    row(
        "Observation explicit, plain permit c1 and naming permit c2 -> permit by c2",
        [PERMIT_ALL, consent(permit(class_=classes("Observation")), id="c2")],
        C2_PERMITS,
        OBSERVATION_EXPLICIT,
    ),
    row(
        "Condition explicit, Observation with plain permit -> permit",
        [PERMIT_ALL],
        C1_PERMITS,
        {"explicit_types": codes("Condition")},
    ),
    row(
        "label R explicit, resource R, permit securityLabel R -> permit",
        [consent(permit(label=labels("R")))],
        C1_PERMITS,
        {"explicit_labels": codes("R")},
        security_labels=codes("R"),
    ),
    row(
        "label R explicit, resource R, permit without securityLabel -> deny explicit",
        [PERMIT_ALL],
        EXPLICIT_DENIES,
        {"explicit_labels": codes("R")},
        security_labels=codes("R"),
    ),
    row(
        "labels R and PSY explicit, resource R+PSY, permit names R only -> deny explicit",
        [consent(permit(label=labels("R")))],
        EXPLICIT_DENIES,
        {"explicit_labels": codes("R", "PSY")},
        security_labels=codes("R", "PSY"),
    ),
    row(
        "R named by c1, PSY by c2: no one permit names both -> deny explicit",
        [consent(permit(label=labels("R"))), consent(permit(label=labels("PSY")), id="c2")],
        EXPLICIT_DENIES,
        {"explicit_labels": codes("R", "PSY")},
        security_labels=codes("R", "PSY"),
    ),
    row(
        "label ETH explicit, resource labelled N only, plain permit -> permit",
        [PERMIT_ALL],
        C1_PERMITS,
        {"explicit_labels": codes("ETH")},
        security_labels=codes("N"),
    ),
    row(
        "type and label explicit, permit names both -> permit",
        [consent(permit(class_=classes("Observation"), label=labels("PSY")))],
        C1_PERMITS,
        {**OBSERVATION_EXPLICIT, "explicit_labels": codes("PSY")},
        security_labels=codes("PSY"),
    ),
    row(
        "type and label explicit, permit names the type only -> deny explicit",
        [consent(permit(class_=classes("Observation")))],
        EXPLICIT_DENIES,
        {**OBSERVATION_EXPLICIT, "explicit_labels": codes("PSY")},
        security_labels=codes("PSY"),
    ),
]

# A malformed element fails safe: a deny still applies, a permit does not. A Consent whose
# structure cannot be read is ignored.
MALFORMED_ROWS = [
    row(
        "deny with actor as a string still denies -> deny",
        [consent(deny(actor="app-a"))],
        C1_DENIES,
    ),
    row("deny with an empty actor list still denies -> deny", [consent(deny(actor=[]))], C1_DENIES),
    row(
        "deny with an actor reference as a string still denies -> deny",
        [consent(deny(actor=[{"reference": "Device/d1"}]))],
        C1_DENIES,
    ),
    row(
        "deny with a numeric client id still denies -> deny",
        [
            consent(
                deny(
                    actor=[{"reference": {"identifier": {"system": CLIENT_ID_SYSTEM, "value": 7}}}]
                )
            )
        ],
        C1_DENIES,
    ),
    row(
        "deny with purpose as a string still denies -> deny",
        [consent(deny(purpose="HRESCH"))],
        C1_DENIES,
    ),
    row(
        "deny with a class coding without system still denies -> deny",
        [consent(deny(class_=[{"code": "Condition"}]))],
        C1_DENIES,
    ),
    row(
        "deny with securityLabel [null] still denies -> deny",
        [consent(deny(label=[None]))],
        C1_DENIES,
    ),
    row(
        "permit with actor as a string does not permit -> default deny",
        [consent(permit(actor="app-a"))],
        DEFAULT_DENIES,
        STRICT,
    ),
    row(
        "permit with one unreadable actor among valid ones does not permit -> default deny",
        [consent(permit(actor=[client("app-a"), None]))],
        DEFAULT_DENIES,
        STRICT,
    ),
    row(
        "permit with a numeric purpose code does not permit -> default deny",
        [consent(permit(purpose=[{"system": PURPOSE_SYSTEM, "code": 5}]))],
        DEFAULT_DENIES,
        STRICT,
    ),
    row(
        "permit with class as an object does not permit -> default deny",
        [consent(permit(class_={"system": RESOURCE_TYPE_SYSTEM, "code": "Observation"}))],
        DEFAULT_DENIES,
        STRICT,
    ),
    row(
        "deny whose nested list is a string: Consent unreadable, ignored -> default permit",
        [consent(deny(provision="permit"))],
        DEFAULT_PERMITS,
    ),
    row(
        "permit with a nested entry that is not an object: ignored -> default deny",
        [consent(permit(provision=["deny"]))],
        DEFAULT_DENIES,
        STRICT,
    ),
    row(
        "junk nested under an exception that does not apply: Consent ignored -> default deny",
        [consent(permit(deny(class_=classes("Condition"), provision=[None])))],
        DEFAULT_DENIES,
        STRICT,
    ),
    row(
        "provision as a list: Consent unreadable, ignored -> default permit",
        [consent([deny()])],
        DEFAULT_PERMITS,
    ),
    row(
        "junk in the list is skipped, the valid deny decides -> deny",
        [None, "Consent", 42, [], {}, {"status": "active"}, consent(deny(), id="c2")],
        C2_DENIES,
    ),
    row(
        "patient as a string is ignored -> default permit",
        [{**DENY_ALL, "patient": "Patient/p1"}],
        DEFAULT_PERMITS,
    ),
    row(
        "scope without coding list is ignored -> default permit",
        [{**DENY_ALL, "scope": {"coding": "patient-privacy"}}],
        DEFAULT_PERMITS,
    ),
    row(
        "id and meta of the wrong type: still decides, names no id -> deny",
        [{**DENY_ALL, "id": 5, "meta": "v1"}],
        Expect(DENY, CONSENT),
    ),
]


@pytest.mark.parametrize(
    "case",
    POLICY_ROWS
    + NO_PATIENT_ROWS
    + FILTER_ROWS
    + ACTOR_ROWS
    + ELEMENT_ROWS
    + PERIOD_ROWS
    + COMBINE_ROWS
    + NESTED_ROWS
    + EXPLICIT_ROWS
    + MALFORMED_ROWS,
)
def test_decision_table(case: Row) -> None:
    policy = ConsentPolicy(version=4, **case.policy)
    request = replace(REQUEST, **case.request)
    consents = copy.deepcopy(case.consents)

    decision = consent_decide(policy=policy, request=request, consents=consents, now=NOW)

    got = Expect(decision.effect, decision.basis, decision.consent_id)
    assert got == case.expect, decision.reason
    assert decision.policy_version == 4
    assert decision.reason
    assert consents == case.consents  # the engine never edits what it reads


# --- what a Decision carries -------------------------------------------------------------


def test_a_consent_decision_names_the_consent_its_version_and_the_policy_version():
    policy = ConsentPolicy(version=12, default=DENY)
    consents = [consent(permit(), id="c1", version="2"), consent(deny(), id="c9", version="5")]

    decision = consent_decide(policy=policy, request=REQUEST, consents=consents, now=NOW)

    assert decision == Decision(
        effect=DENY,
        basis=CONSENT,
        policy_version=12,
        reason="Consent/c9 denies this request",
        rule="consent-deny",
        consent_id="c9",
        consent_version="5",
    )
    assert not decision.permitted


def test_a_consent_without_meta_decides_with_no_version():
    decision = consent_decide(
        policy=ConsentPolicy(version=1, default=DENY),
        request=REQUEST,
        consents=[consent(permit(), version=None)],
        now=NOW,
    )
    assert (decision.consent_id, decision.consent_version) == ("c1", None)
    assert decision.permitted


@pytest.mark.parametrize("basis_rows", [[], [PERMIT_ALL]], ids=["no consent", "explicit"])
def test_a_policy_decision_names_no_consent(basis_rows):
    policy = ConsentPolicy(version=8, explicit_types=frozenset({"Observation"}))
    decision = consent_decide(policy=policy, request=REQUEST, consents=basis_rows, now=NOW)
    assert decision.basis is EXPLICIT
    assert (decision.consent_id, decision.consent_version, decision.policy_version) == (
        None,
        None,
        8,
    )
    assert "type Observation" in decision.reason


def test_a_new_policy_permits_and_answers_denials_as_not_found():
    policy = ConsentPolicy(version=1)
    assert policy.default is PERMIT
    assert policy.denied_answer is DeniedAnswer.NOT_FOUND
    assert not (policy.allowed_purposes or policy.explicit_types or policy.explicit_labels)


def test_policy_request_and_decision_are_frozen():
    decision = consent_decide(
        policy=ConsentPolicy(version=1), request=REQUEST, consents=[], now=NOW
    )
    for value, name in (
        (decision, "effect"),
        (REQUEST, "purpose"),
        (ConsentPolicy(version=1), "version"),
    ):
        with pytest.raises(FrozenInstanceError):
            setattr(value, name, None)


def test_a_naive_now_is_taken_as_utc():
    consents = [consent(deny(period=period("2026-05-15T12:00:00Z")))]
    naive = NOW.replace(tzinfo=None)
    before = consent_decide(
        policy=ConsentPolicy(version=1),
        request=REQUEST,
        consents=consents,
        now=naive.replace(hour=11),
    )
    at = consent_decide(
        policy=ConsentPolicy(version=1), request=REQUEST, consents=consents, now=naive
    )
    assert (before.effect, at.effect) == (PERMIT, DENY)


@pytest.mark.parametrize(
    ("value", "span"),
    [
        ("2026", ("2026-01-01T00:00:00+00:00", "2027-01-01T00:00:00+00:00")),
        ("2026-12", ("2026-12-01T00:00:00+00:00", "2027-01-01T00:00:00+00:00")),
        ("2026-02-28", ("2026-02-28T00:00:00+00:00", "2026-03-01T00:00:00+00:00")),
        ("2026-05-15T12:30", ("2026-05-15T12:30:00+00:00", "2026-05-15T12:30:00+00:00")),
        ("2026-05-15T12:30:01.5+05:30", ("2026-05-15T12:30:01.500000+05:30",) * 2),
        ("2026-13", None),
        ("2026-05-15T24:00:00Z", None),
        ("2026-05-15T10:00:00+25:00", None),
        ("9999", None),  # no instant after it
        ("0000", None),
        ("\uff12\uff10\uff12\uff16", None),  # full-width digits are not FHIR digits
        ("2026-05-15 12:00:00", None),
        ("", None),
        (None, None),
        (2026, None),
    ],
)
def test_fhir_datetime_spans(value, span):
    # Compared as instants: an offset of the value may come back as the same instant in UTC.
    expected = span and tuple(datetime.fromisoformat(instant) for instant in span)
    assert datetime_span(value=value) == expected


# --- malformed input never raises ---------------------------------------------------------

JUNK: list[Any] = [None, True, 0, -1.5, "", "permit", [], [None], {}, {"x": 1}, [[]], {"type": []}]


def _mutations(document: Any, rng: random.Random) -> Any:
    """The document with a random node replaced by junk, recursively."""
    if isinstance(document, dict) and document:
        key = rng.choice(sorted(document))
        mutated = dict(document)
        mutated[key] = rng.choice(JUNK) if rng.random() < 0.5 else _mutations(document[key], rng)
        return mutated
    if isinstance(document, list) and document:
        index = rng.randrange(len(document))
        mutated_list = list(document)
        mutated_list[index] = _mutations(document[index], rng)
        return mutated_list
    return rng.choice(JUNK)


def test_malformed_consents_never_raise():
    rng = random.Random(20260515)
    full = consent(
        deny(
            permit(
                deny(class_=classes("Observation"), label=labels("PSY")),
                actor=[partner("acme"), client("app-a")],
                purpose=purposes("TREAT"),
                period=period("2026-01", "2026-12-31T23:59:59Z"),
            ),
            period=period("2025"),
        )
    )
    policy = ConsentPolicy(
        version=1, explicit_types=frozenset({"Observation"}), explicit_labels=frozenset({"PSY"})
    )
    request = replace(REQUEST, security_labels=frozenset({"PSY"}))
    for _ in range(3000):
        decision = consent_decide(
            policy=policy, request=request, consents=[_mutations(full, rng)], now=NOW
        )
        assert decision.effect in (PERMIT, DENY)


def test_a_consent_nested_deeper_than_anyone_writes_is_ignored():
    provision: Json = deny()
    for _ in range(2000):
        provision = permit(provision)
    decision = consent_decide(
        policy=ConsentPolicy(version=1), request=REQUEST, consents=[consent(provision)], now=NOW
    )
    assert (decision.effect, decision.basis) == (PERMIT, DEFAULT)


# --- which rule decided (policy tests count them: consent/governance.py) -----------------


@pytest.mark.parametrize(
    ("policy", "consents", "request_changes", "rule"),
    [
        ({}, [], {}, "default"),
        ({"partner_defaults": {"acme": DENY}}, [], {}, "partner:acme"),
        (
            {"partner_defaults": {"acme": DENY}, "client_defaults": {"app-a": PERMIT}},
            [],
            ORGANIZATION,
            "client:app-a",
        ),
        (TREAT_ONLY, [DENY_ALL], {"purpose": "HRESCH"}, "purpose"),
        (OBSERVATION_EXPLICIT, [], {}, "explicit-type:Observation"),
        (OBSERVATION_EXPLICIT, [PERMIT_ALL], {}, "explicit-type:Observation"),
        (
            {"explicit_labels": codes("R", "PSY")},
            [],
            {"security_labels": codes("R", "PSY")},
            "explicit-label:PSY",
        ),
        (
            {**OBSERVATION_EXPLICIT, "explicit_labels": codes("R", "PSY")},
            [consent(permit(class_=classes("Observation"), label=labels("PSY")))],
            {"security_labels": codes("R", "PSY")},
            "explicit-label:R",
        ),
        (STRICT, [PERMIT_ALL], {}, "consent-permit"),
        ({}, [DENY_ALL], {}, "consent-deny"),
    ],
)
def test_a_decision_names_the_rule_that_decided(policy, consents, request_changes, rule):
    decision = consent_decide(
        policy=ConsentPolicy(version=1, **policy),
        request=replace(REQUEST, **request_changes),
        consents=consents,
        now=NOW,
    )
    assert decision.rule == rule, decision.reason
