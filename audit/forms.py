"""The filters of a tenant's audit trail page (admin)."""

from typing import Any

from django import forms

from audit.models import Interaction

OUTCOMES = [("", "any"), ("ok", "answered (< 400)"), ("refused", "refused or failed (>= 400)")]


class TrailFilterForm(forms.Form):
    client_id = forms.CharField(required=False, max_length=64)
    partner = forms.CharField(required=False, max_length=100)
    actor = forms.CharField(required=False, max_length=150)
    patient = forms.CharField(required=False, max_length=64, help_text="a patient id")
    interaction = forms.ChoiceField(required=False, choices=[("", "any"), *Interaction.choices])
    outcome = forms.ChoiceField(required=False, choices=OUTCOMES)
    since = forms.DateTimeField(required=False, help_text="e.g. 2026-11-30 08:00 (UTC)")
    until = forms.DateTimeField(required=False)
    before = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        since, until = cleaned.get("since"), cleaned.get("until")
        if since and until and until <= since:
            self.add_error("until", "must be after since")
        return cleaned
