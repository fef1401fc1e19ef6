"""Public-schema limit configuration (overrides, kill switch) and the throttle event log."""

from django.core.exceptions import ValidationError
from django.db import models

from fhirplatform.limits.codes import EndpointClass, ThrottleReason
from fhirplatform.resource_types import R4_RESOURCE_TYPES


class LimitOverride(models.Model):
    """Replaces plan limits for one tenant, one client, or one client on one tenant.

    tenant only: the tenant-wide buckets and tenant concurrency.
    client only: the client-wide buckets (created even when the client has no plan).
    tenant and client: the grant's endpoint buckets, concurrency and daily quota.
    resource_type set: a resource-type bucket on that tenant (per client if client is set).
    """

    tenant = models.ForeignKey(
        "tenants.Tenant", on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    client = models.ForeignKey(
        "tenants.ApiClient", on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    endpoint_class = models.CharField(
        max_length=20,
        choices=[(str(value), str(value)) for value in EndpointClass],
        blank=True,
        help_text="Empty applies to every endpoint class.",
    )
    resource_type = models.CharField(max_length=64, blank=True)
    per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Cost units per minute, for every class (export included)."
    )
    burst_seconds = models.PositiveIntegerField(null=True, blank=True)
    concurrency = models.PositiveIntegerField(null=True, blank=True)
    daily_quota = models.PositiveIntegerField(null=True, blank=True)
    dry_run = models.BooleanField(default=False, help_text="Count and report, never refuse.")
    note = models.CharField(max_length=200, blank=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["tenant__slug", "client__client_id", "endpoint_class", "resource_type"]

    def __str__(self) -> str:
        parts = [
            f"tenant={self.tenant.slug}" if self.tenant else "",
            f"client={self.client.client_id}" if self.client else "",
            self.endpoint_class,
            self.resource_type,
        ]
        return "override " + " ".join(part for part in parts if part)

    def clean(self) -> None:
        if self.tenant_id is None and self.client_id is None:
            raise ValidationError("An override names a tenant, a client, or both.")
        if self.resource_type and self.resource_type not in R4_RESOURCE_TYPES:
            raise ValidationError({"resource_type": "Not an R4 resource type."})
        if self.resource_type and (self.tenant_id is None or self.per_minute is None):
            raise ValidationError("A resource-type override needs a tenant and a per-minute rate.")


class LimiterSwitch(models.Model):
    """The single platform-wide switch row (pk=1): limits on, or off for everyone."""

    limits_enabled = models.BooleanField(
        default=True, help_text="Off: nothing is refused; headers and events still report."
    )
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "limiter switch"

    def __str__(self) -> str:
        return "limits on" if self.limits_enabled else "limits OFF (kill switch)"


class ThrottleEvent(models.Model):
    """Refusals, aggregated per second per (tenant, client, reason, endpoint class)."""

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    client = models.ForeignKey("tenants.ApiClient", on_delete=models.CASCADE, related_name="+")
    reason = models.CharField(
        max_length=20, choices=[(str(value), str(value)) for value in ThrottleReason]
    )
    endpoint_class = models.CharField(max_length=20)
    policy = models.CharField(max_length=80, help_text="The bucket that refused.")
    dry_run = models.BooleanField(default=False, help_text="Would have been refused.")
    occurred = models.DateTimeField(help_text="Start of the second the refusals fell in.")
    count = models.PositiveIntegerField(default=1)

    class Meta:
        ordering = ["-occurred"]
        indexes = [models.Index(fields=["tenant", "client", "-occurred"])]

    def __str__(self) -> str:
        return f"{self.reason} x{self.count} {self.occurred:%Y-%m-%d %H:%M:%S}"
