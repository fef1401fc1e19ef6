"""Public-schema cache configuration: a tenant's TTL rule per resource type."""

from django.core.exceptions import ValidationError
from django.db import models

from fhirplatform.cache.type_classes import Rule, rule_bounded, rule_problems


class CacheRule(models.Model):
    """Replaces the default rule (type_classes.rule_default) of one type on one tenant."""

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    resource_type = models.CharField(max_length=64)
    ttl_seconds = models.PositiveIntegerField(
        help_text="Seconds a cached read or search stays fresh; 0: never cached."
    )
    swr_seconds = models.PositiveIntegerField(
        default=0,
        help_text="Seconds more it may be served stale while one request refreshes it "
        "(reference-data types only; PHI is never served stale).",
    )
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["tenant__slug", "resource_type"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "resource_type"], name="cache_rule_one_per_tenant_type"
            )
        ]

    def __str__(self) -> str:
        return f"{self.resource_type} on {self.tenant.slug}" if self.tenant_id else "cache rule"

    def clean(self) -> None:
        problems = rule_problems(
            resource_type=self.resource_type,
            ttl_seconds=self.ttl_seconds or 0,
            swr_seconds=self.swr_seconds or 0,
        )
        if problems:
            raise ValidationError(problems)

    @property
    def rule(self) -> Rule:
        return rule_bounded(self.resource_type, Rule(self.ttl_seconds, self.swr_seconds))
