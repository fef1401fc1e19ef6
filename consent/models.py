"""Tenant-schema consent governance: the versions of the tenant's consent policy, and the
policy tests operators state as evidence of what the policy decides.

A policy version is append-only (a trigger refuses UPDATE and DELETE, migration 0001):
an auditor reads which rules were in force when a Decision named its version. Users live
in the public schema, so `created_by` is a username, never a foreign key across schemas.
"""

from django.db import models
from django.db.models import Q

from consent.codes import DeniedAnswer, Effect

EFFECT_CHOICES = [(effect.value, effect.value) for effect in Effect]
DENIED_ANSWER_CHOICES = [(answer.value, answer.value) for answer in DeniedAnswer]


class ConsentPolicyVersion(models.Model):
    """One version of the tenant's consent policy; the newest is in force. Its fields
    are ConsentPolicy's, by the same names (consent/decision.py)."""

    version = models.PositiveIntegerField(unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.CharField(max_length=150)
    note = models.TextField(blank=True, help_text="Why it changed; required after version 1.")
    default = models.CharField(max_length=10, choices=EFFECT_CHOICES)
    partner_defaults = models.JSONField(default=dict, blank=True)  # {partner slug: effect}
    client_defaults = models.JSONField(default=dict, blank=True)  # {client id: effect}
    allowed_purposes = models.JSONField(default=list, blank=True)
    explicit_types = models.JSONField(default=list, blank=True)
    explicit_labels = models.JSONField(default=list, blank=True)
    denied_answer = models.CharField(max_length=20, choices=DENIED_ANSWER_CHOICES)

    class Meta:
        ordering = ["-version"]
        constraints = [
            models.CheckConstraint(condition=Q(version__gte=1), name="policy_version_positive"),
            models.CheckConstraint(
                condition=Q(version=1) | ~Q(note=""), name="policy_version_note_after_first"
            ),
        ]

    def __str__(self) -> str:
        return f"consent policy v{self.version}"


class PolicyTest(models.Model):
    """An expected decision, stated by an operator: this client, for this purpose, on
    this resource type (with these labels), for this patient situation, gets `expected`.

    The patient situation is one of: `patient_id` (that patient's stored Consents),
    `consents` (Consents stated here, taken as one hypothetical patient's own), or
    neither (a resource in no patient compartment)."""

    name = models.CharField(max_length=200, unique=True)
    client_id = models.CharField(max_length=64)
    purpose = models.CharField(max_length=64, blank=True, help_text="Blank: no purpose of use.")
    resource_type = models.CharField(max_length=64)
    security_labels = models.JSONField(default=list, blank=True)
    patient_id = models.CharField(max_length=64, blank=True)
    consents = models.JSONField(null=True, blank=True)
    expected = models.CharField(max_length=10, choices=EFFECT_CHOICES)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.CharField(max_length=150)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(patient_id="") | Q(consents__isnull=True),
                name="policy_test_one_patient_situation",
            ),
        ]

    def __str__(self) -> str:
        return self.name
