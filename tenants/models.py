"""Public-schema governance: tenants, partners, API clients, grants and rate plans."""

import uuid

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django_tenants.models import DomainMixin, TenantMixin

# Never cleared: a token issued before it stays dead after the row is re-activated.
DEACTIVATED_HELP = "Latest revocation or suspension; tokens issued before it are refused."


class RatePlan(models.Model):
    """A named tier of limits. Rates are requests (weighted cost units) per minute."""

    name = models.SlugField(max_length=40, unique=True)
    description = models.CharField(max_length=200, blank=True)
    read_per_minute = models.PositiveIntegerField()
    search_per_minute = models.PositiveIntegerField()
    write_per_minute = models.PositiveIntegerField()
    history_per_minute = models.PositiveIntegerField()
    batch_per_minute = models.PositiveIntegerField()
    export_per_hour = models.PositiveIntegerField()
    export_poll_per_minute = models.PositiveIntegerField()
    # Bulk exports queued or running at once (fhirplatform/fhir/export): on one tenant (its
    # plan's cap), and by one client on it (the client's plan, else its grant's).
    export_jobs_per_tenant = models.PositiveIntegerField(
        default=2, help_text="Bulk exports queued or running at once on a tenant."
    )
    export_jobs_per_client = models.PositiveIntegerField(
        default=1, help_text="Bulk exports queued or running at once by one client on a tenant."
    )
    burst_seconds = models.PositiveIntegerField(
        default=10, help_text="Bucket depth, in seconds of the sustained rate."
    )
    concurrency = models.PositiveIntegerField(help_text="In-flight requests at once.")
    daily_quota = models.PositiveIntegerField(help_text="Cost units per UTC day.")
    priority = models.PositiveSmallIntegerField(
        default=50, help_text="Shed order under overload: lower is shed first."
    )
    dry_run = models.BooleanField(default=False, help_text="Count and report, never refuse.")

    class Meta:
        ordering = ["priority", "name"]

    def __str__(self) -> str:
        return self.name


class TenantStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    SUSPENDED = "suspended", "Suspended"


class IsolationTier(models.TextChoices):
    SCHEMA = "schema", "Own schema"
    SCHEMA_DEDICATED_WORKERS = "schema-dedicated-workers", "Own schema, dedicated workers"


class DataRegion(models.TextChoices):
    US_EAST = "us-east", "US East"
    US_WEST = "us-west", "US West"
    EU_WEST = "eu-west", "EU West"
    EU_CENTRAL = "eu-central", "EU Central"


class Tenant(TenantMixin):
    slug = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=200)
    status = models.CharField(
        max_length=20, choices=TenantStatus.choices, default=TenantStatus.ACTIVE
    )
    isolation_tier = models.CharField(
        max_length=40, choices=IsolationTier.choices, default=IsolationTier.SCHEMA
    )
    data_region = models.CharField(
        max_length=20, choices=DataRegion.choices, default=DataRegion.US_EAST
    )
    plan = models.ForeignKey(RatePlan, on_delete=models.PROTECT, related_name="tenants")
    # Six years, as HIPAA keeps its documentation; older sealed blocks of the tenant's
    # audit trail are archived (audit/archiving.py), never deleted.
    # FHIR update-as-create: a PUT to an id the tenant does not hold creates the resource
    # with the client's id (clients that own their ids depend on it).
    fhir_update_creates = models.BooleanField(
        default=True,
        help_text="PUT to an id that does not exist creates the resource with that id",
    )
    audit_retention_days = models.PositiveIntegerField(
        default=2190,
        validators=[MinValueValidator(1)],
        help_text="Days a sealed audit block stays in the live trail before it is archived",
    )
    created = models.DateTimeField(auto_now_add=True)
    deactivated_at = models.DateTimeField(null=True, blank=True, help_text=DEACTIVATED_HELP)

    # The provisioning service creates and migrates the schema explicitly.
    auto_create_schema = False
    auto_drop_schema = False

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class Domain(DomainMixin):
    """django-tenants routing record; the domain is the tenant's path segment under /fhir/."""


class Partner(models.Model):
    """A partner developer organisation that owns API clients."""

    name = models.CharField(max_length=200, unique=True)
    # How a patient's Consent names the partner (provision.actor, system urn:fhirplatform:partner).
    slug = models.SlugField(max_length=60, unique=True)
    contact_email = models.EmailField(blank=True)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="partners")
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ClientStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    REVOKED = "revoked", "Revoked"


class ApiClient(models.Model):
    """A partner's system that calls the FHIR API with OAuth2 client credentials."""

    client_id = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    partner = models.ForeignKey(Partner, on_delete=models.PROTECT, related_name="clients")
    status = models.CharField(
        max_length=20, choices=ClientStatus.choices, default=ClientStatus.ACTIVE
    )
    jwks_url = models.URLField(
        max_length=500,
        blank=True,
        help_text="A JWKS URL for private_key_jwt: an assertion's jku must name it.",
    )
    jwks = models.JSONField(
        null=True, blank=True, help_text="Registered public keys (JWKS) for private_key_jwt."
    )
    plan = models.ForeignKey(
        RatePlan,
        on_delete=models.PROTECT,
        related_name="clients",
        null=True,
        blank=True,
        help_text="Client-wide limits; empty means the limits of each grant's plan.",
    )
    created = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    deactivated_at = models.DateTimeField(null=True, blank=True, help_text=DEACTIVATED_HELP)

    class Meta:
        ordering = ["partner__name", "name"]
        verbose_name = "API client"

    def __str__(self) -> str:
        return f"{self.name} ({self.client_id})"


class ClientSecret(models.Model):
    """A hashed client secret. Rotation keeps the old one valid until `expires_at`."""

    client = models.ForeignKey(ApiClient, on_delete=models.CASCADE, related_name="secrets")
    secret_hash = models.CharField(max_length=200)
    hint = models.CharField(max_length=8, help_text="Last characters, to tell secrets apart.")
    created = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"secret …{self.hint}"


class GrantStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    REVOKED = "revoked", "Revoked"


class Grant(models.Model):
    """Which client may reach which tenant, with which scopes, purposes and plan."""

    client = models.ForeignKey(ApiClient, on_delete=models.CASCADE, related_name="grants")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="grants")
    scopes = models.TextField(help_text="Space-separated SMART scopes.")
    purposes = models.JSONField(
        default=list, blank=True, help_text="Purposes of use (v3 PurposeOfUse codes)."
    )
    plan = models.ForeignKey(RatePlan, on_delete=models.PROTECT, related_name="grants")
    status = models.CharField(
        max_length=20, choices=GrantStatus.choices, default=GrantStatus.ACTIVE
    )
    created = models.DateTimeField(auto_now_add=True)
    deactivated_at = models.DateTimeField(null=True, blank=True, help_text=DEACTIVATED_HELP)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["client", "tenant"], name="one_grant_per_client_tenant")
        ]
        ordering = ["tenant__slug", "client__client_id"]

    def __str__(self) -> str:
        return f"{self.client.client_id} → {self.tenant.slug}"


class AccessToken(models.Model):
    """An issued opaque access token; only its hash is stored."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    token_hash = models.CharField(max_length=64, unique=True)
    client = models.ForeignKey(ApiClient, on_delete=models.CASCADE, related_name="tokens")
    grant = models.ForeignKey(Grant, on_delete=models.CASCADE, related_name="tokens")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="tokens")
    scopes = models.TextField()
    auth_method = models.CharField(max_length=40)
    # The purpose of use the token was issued for (one of its grant's; blank: none).
    purpose = models.CharField(max_length=64, blank=True, default="")
    issued_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-issued_at"]

    def __str__(self) -> str:
        return f"token {self.id} ({self.client.client_id} → {self.tenant.slug})"


class UsedJti(models.Model):
    """A private_key_jwt assertion id already spent, kept until the assertion expires.

    The durable record of replay protection: Redis only answers the common case
    faster, and forgets everything when it restarts."""

    client = models.ForeignKey(ApiClient, on_delete=models.CASCADE, related_name="used_jtis")
    jti_hash = models.CharField(max_length=64, help_text="sha256 of the jti.")
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["client", "jti_hash"], name="one_use_per_client_jti")
        ]
        verbose_name = "used assertion id"

    def __str__(self) -> str:
        return f"jti {self.jti_hash[:12]}… ({self.client_id})"
