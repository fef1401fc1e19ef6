"""The operators' consent policy forms. A form parses what an operator types (codes
separated by spaces, one override per line, JSON) into the services' arguments; the
services check the values (consent/services.py) and their refusals come back as these
forms' field errors. Nothing here writes."""

import json
import re
from typing import Any

from django import forms

from consent.codes import DeniedAnswer, Effect
from consent.decision import ConsentPolicy
from consent.selectors import POLICY_FIELDS
from consent.services import NON_FIELD, ConsentPolicyError

EFFECTS = [(effect.value, effect.value) for effect in Effect]
DENIED_ANSWERS = [
    (DeniedAnswer.NOT_FOUND.value, "404, as if the resource did not exist"),
    (DeniedAnswer.FORBIDDEN.value, "403 with the consent reason code"),
]
_SEPARATORS = re.compile(r"[\s,]+")
_OVERRIDE_LINE = re.compile(r"(?P<key>[^\s:=]+)\s*[:=]\s*(?P<effect>\S+)")


def _codes_parse(text: str) -> list[str]:
    return [code for code in _SEPARATORS.split(text.strip()) if code]


def _overrides_parse(text: str) -> dict[str, str]:
    overrides: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = _OVERRIDE_LINE.fullmatch(line.strip())
        if match is None:
            raise forms.ValidationError(f"line {number}: write one override a line, 'key: deny'")
        overrides[match["key"]] = match["effect"]
    return overrides


def _overrides_text(overrides: Any) -> str:
    return "\n".join(f"{key}: {effect}" for key, effect in sorted(overrides.items()))


def service_errors_add(form: forms.Form, error: ConsentPolicyError) -> None:
    """A service's refusal on the form: each message on its field, or above the form."""
    for field, messages in error.errors.items():
        target = field if field in form.fields else None
        for message in messages:
            form.add_error(
                target, message if target or field == NON_FIELD else f"{field}: {message}"
            )


class PolicyForm(forms.Form):
    default = forms.ChoiceField(
        choices=EFFECTS, help_text="When no Consent of the patient applies (or no patient)."
    )
    partner_defaults = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        required=False,
        help_text="Overrides of the default, one partner a line: 'partner-slug: deny'.",
    )
    client_defaults = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        required=False,
        help_text="Overrides of the default, one client a line: 'client-id: permit'. "
        "A client's override wins over its partner's.",
    )
    allowed_purposes = forms.CharField(
        required=False,
        help_text="Purpose of use codes (v3 ActReason), separated by spaces; empty: any.",
    )
    explicit_types = forms.CharField(
        required=False,
        help_text="Resource types only a Consent permit naming them opens, e.g. Observation.",
    )
    explicit_labels = forms.CharField(
        required=False,
        help_text="Security labels only a Consent permit naming them opens, e.g. R ETH PSY.",
    )
    denied_answer = forms.ChoiceField(choices=DENIED_ANSWERS, label="A denied read answers")
    note = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Why the policy changes: kept with the new version for auditors.",
    )

    def clean_partner_defaults(self) -> dict[str, str]:
        return _overrides_parse(self.cleaned_data["partner_defaults"])

    def clean_client_defaults(self) -> dict[str, str]:
        return _overrides_parse(self.cleaned_data["client_defaults"])

    def clean_allowed_purposes(self) -> list[str]:
        return _codes_parse(self.cleaned_data["allowed_purposes"])

    def clean_explicit_types(self) -> list[str]:
        return _codes_parse(self.cleaned_data["explicit_types"])

    def clean_explicit_labels(self) -> list[str]:
        return _codes_parse(self.cleaned_data["explicit_labels"])

    def policy_values(self) -> dict[str, Any]:
        """The policy fields as typed: policy_update's keyword arguments."""
        return {name: self.cleaned_data[name] for name in POLICY_FIELDS}


def policy_form_initial(policy: ConsentPolicy) -> dict[str, Any]:
    return {
        "default": policy.default,
        "partner_defaults": _overrides_text(policy.partner_defaults),
        "client_defaults": _overrides_text(policy.client_defaults),
        "allowed_purposes": " ".join(sorted(policy.allowed_purposes)),
        "explicit_types": " ".join(sorted(policy.explicit_types)),
        "explicit_labels": " ".join(sorted(policy.explicit_labels)),
        "denied_answer": policy.denied_answer,
    }


class PolicyTestForm(forms.Form):
    name = forms.CharField(max_length=200)
    client_id = forms.CharField(max_length=64, label="Client id")
    purpose = forms.CharField(max_length=64, required=False, help_text="Empty: no purpose.")
    resource_type = forms.CharField(max_length=64)
    security_labels = forms.CharField(
        required=False, help_text="The resource's security label codes, separated by spaces."
    )
    patient_id = forms.CharField(
        max_length=64,
        required=False,
        label="Stored patient",
        help_text="A patient id: the test reads that patient's Consents as stored.",
    )
    consents = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4}),
        required=False,
        label="Stated Consents",
        help_text="Or a JSON list of Consent resources, a hypothetical patient's own "
        "([] : a patient without any). Neither: a resource in no patient compartment.",
    )
    expected = forms.ChoiceField(choices=EFFECTS)

    def clean_security_labels(self) -> list[str]:
        return _codes_parse(self.cleaned_data["security_labels"])

    def clean_consents(self) -> Any:
        text = self.cleaned_data["consents"].strip()
        if not text:
            return None
        try:
            consents = json.loads(text)
        except ValueError as exc:
            raise forms.ValidationError(f"not JSON: {exc}") from None
        return [consents] if isinstance(consents, dict) else consents
