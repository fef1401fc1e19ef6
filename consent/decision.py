"""The consent decision: may this client, for this purpose, see this resource of this
patient? Pure: the caller brings the tenant's policy, the patient's Consents and the clock.

The order of consent_decide (the first rule that decides wins):
1. purpose of use outside the tenant's allowed set -> deny (policy), whatever the Consents say
2. no patient compartment (Organization, Practitioner...) -> the policy default
3. the patient's applicable Consent provisions: any deny -> deny (deny overrides permit)
4. a permit -> permit, but an explicit type or label needs a permit that names it
5. nothing applies -> the policy default (client override > partner override > tenant)
The policy default never permits an explicit type or label.
Each Decision names the rule that decided (`Rule`): policy tests count which rules of a
policy some test exercises (consent/governance.py).
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from consent.codes import DecisionBasis, DeniedAnswer, Effect
from consent.provisions import ProvisionOutcome, consent_applies, consent_outcomes


class Rule(StrEnum):
    """The kinds of rule that decide a request; a Decision's `rule` is one of these, with
    what it names after a colon where a policy holds several ("client:app-a"). Policy
    tests count which rules of a policy some test exercised (consent/governance.py)."""

    DEFAULT = "default"  # the tenant default
    PARTNER = "partner"  # a partner override: partner:<slug>
    CLIENT = "client"  # a client override: client:<client id>
    PURPOSE = "purpose"  # a purpose outside allowed_purposes
    EXPLICIT_TYPE = "explicit-type"  # explicit-type:<resource type>
    EXPLICIT_LABEL = "explicit-label"  # explicit-label:<security label>
    CONSENT_PERMIT = "consent-permit"
    CONSENT_DENY = "consent-deny"


def rule_name(rule: Rule, subject: str | None = None) -> str:
    return str(rule) if subject is None else f"{rule}:{subject}"


@dataclass(frozen=True, kw_only=True)
class ConsentPolicy:
    """A tenant's consent policy, as its operators set it; `version` goes on every Decision."""

    version: int
    default: Effect = Effect.PERMIT  # when no Consent provision applies; new tenants permit
    # Overrides of `default` by partner slug and by client id; the client's wins.
    partner_defaults: Mapping[str, Effect] = field(default_factory=dict)
    client_defaults: Mapping[str, Effect] = field(default_factory=dict)
    allowed_purposes: frozenset[str] = frozenset()  # v3 ActReason codes; empty = any
    explicit_types: frozenset[str] = frozenset()  # need a permit whose class names them
    explicit_labels: frozenset[str] = frozenset()  # need a permit whose securityLabel names them
    denied_answer: DeniedAnswer = DeniedAnswer.NOT_FOUND  # carried for the pipeline


@dataclass(frozen=True, kw_only=True)
class ConsentRequest:
    tenant: str  # for the record: the caller brings only this tenant's Consents
    client_id: str
    partner: str
    purpose: str | None
    patient_id: str | None  # None outside any patient compartment
    resource_type: str
    security_labels: frozenset[str] = frozenset()  # codes of the resource's meta.security


@dataclass(frozen=True, kw_only=True)
class Decision:
    effect: Effect
    basis: DecisionBasis
    policy_version: int
    reason: str
    rule: str  # the rule that decided, named by rule_name()
    consent_id: str | None = None  # the deciding Consent, when one decided
    consent_version: str | None = None  # its meta.versionId

    @property
    def permitted(self) -> bool:
        return self.effect is Effect.PERMIT


def consent_decide(
    *,
    policy: ConsentPolicy,
    request: ConsentRequest,
    consents: Sequence[Mapping[str, Any]],
    now: datetime,
) -> Decision:
    """Decide one request against the tenant's policy and the patient's Consents.

    `consents` may hold anything (other patients, drafts, malformed JSON): only active
    patient-privacy Consents of request.patient_id are read, and nothing raises. A naive
    `now` is taken as UTC. When several Consents deny (or permit), the first in
    `consents` is named as the deciding one."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    if policy.allowed_purposes and request.purpose not in policy.allowed_purposes:
        return _policy_decision(
            policy,
            Effect.DENY,
            DecisionBasis.POLICY_PURPOSE,
            f"purpose {request.purpose or '(none)'} is not allowed on this tenant",
            rule_name(Rule.PURPOSE),
        )
    if request.patient_id is None:
        return _default_decision(policy, request, why="the resource is in no patient compartment")

    patient_id = request.patient_id
    outcomes = [
        outcome
        for consent in consents
        if consent_applies(consent=consent, patient_id=patient_id)
        for outcome in consent_outcomes(consent=consent, request=request, now=now)
    ]
    denial = next((o for o in outcomes if o.effect is Effect.DENY), None)
    if denial is not None:
        return _consent_decision(policy, denial, "denies", Rule.CONSENT_DENY)
    permits = [o for o in outcomes if o.effect is Effect.PERMIT]
    if not permits:
        return _default_decision(policy, request, why="no Consent provision applies")
    named = next((o for o in permits if _names_explicit(policy, request, o)), None)
    if named is None:
        return _policy_decision(
            policy,
            Effect.DENY,
            DecisionBasis.POLICY_EXPLICIT,
            f"an explicit Consent permit is required for {_explicit_text(policy, request)}",
            _explicit_rule(policy, request, permits[0]),
        )
    return _consent_decision(policy, named, "permits", Rule.CONSENT_PERMIT)


def policy_default(*, policy: ConsentPolicy, client_id: str, partner: str) -> tuple[Effect, str]:
    """The policy's answer when no Consent decides, and where it came from."""
    effect, source, _ = _default_source(policy, client_id=client_id, partner=partner)
    return effect, source


def _default_source(
    policy: ConsentPolicy, *, client_id: str, partner: str
) -> tuple[Effect, str, str]:
    if client_id in policy.client_defaults:
        rule = rule_name(Rule.CLIENT, client_id)
        return policy.client_defaults[client_id], "the client's override", rule
    if partner in policy.partner_defaults:
        rule = rule_name(Rule.PARTNER, partner)
        return policy.partner_defaults[partner], "the partner's override", rule
    return policy.default, "the tenant default", rule_name(Rule.DEFAULT)


def _default_decision(policy: ConsentPolicy, request: ConsentRequest, *, why: str) -> Decision:
    effect, source, rule = _default_source(
        policy, client_id=request.client_id, partner=request.partner
    )
    explicit = _explicit_text(policy, request)
    if effect is Effect.PERMIT and explicit:
        # The default speaks for patients who said nothing; an explicit type or label is
        # one the tenant decided needs the patient's own word.
        return _policy_decision(
            policy,
            Effect.DENY,
            DecisionBasis.POLICY_EXPLICIT,
            f"{why}; an explicit Consent permit is required for {explicit}",
            _explicit_rule(policy, request, None),
        )
    return _policy_decision(
        policy, effect, DecisionBasis.POLICY_DEFAULT, f"{why}; {source} is {effect}", rule
    )


def _explicit_rule(
    policy: ConsentPolicy, request: ConsentRequest, permit: ProvisionOutcome | None
) -> str:
    """The explicit type or label a denial names: the first one `permit` (the first
    permit, when there is one) leaves unnamed, the type before the labels."""
    if request.resource_type in policy.explicit_types and not (permit and permit.names_type):
        return rule_name(Rule.EXPLICIT_TYPE, request.resource_type)
    named = permit.named_labels if permit else frozenset()
    missing = sorted((request.security_labels & policy.explicit_labels) - named)
    return rule_name(Rule.EXPLICIT_LABEL, missing[0])


def _explicit_text(policy: ConsentPolicy, request: ConsentRequest) -> str:
    """What of the request needs an explicit permit, for the reason; empty when nothing."""
    needs = sorted(request.security_labels & policy.explicit_labels)
    labels = [f"label {label}" for label in needs]
    if request.resource_type in policy.explicit_types:
        labels.insert(0, f"type {request.resource_type}")
    return ", ".join(labels)


def _names_explicit(
    policy: ConsentPolicy, request: ConsentRequest, outcome: ProvisionOutcome
) -> bool:
    """Whether one permit path names the explicit type and every explicit label: a label
    named by one Consent and the type by another do not add up to a permit."""
    if request.resource_type in policy.explicit_types and not outcome.names_type:
        return False
    return request.security_labels & policy.explicit_labels <= outcome.named_labels


def _policy_decision(
    policy: ConsentPolicy, effect: Effect, basis: DecisionBasis, reason: str, rule: str
) -> Decision:
    return Decision(
        effect=effect, basis=basis, policy_version=policy.version, reason=reason, rule=rule
    )


def _consent_decision(
    policy: ConsentPolicy, outcome: ProvisionOutcome, verb: str, rule: Rule
) -> Decision:
    return Decision(
        effect=outcome.effect,
        basis=DecisionBasis.CONSENT,
        policy_version=policy.version,
        reason=f"Consent/{outcome.consent_id or '(no id)'} {verb} this request",
        rule=rule_name(rule),
        consent_id=outcome.consent_id,
        consent_version=outcome.consent_version,
    )
