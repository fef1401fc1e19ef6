"""The one settings module. Every value comes from the environment (see .env.example)."""

from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from fhirplatform.env import env_bool, env_int, env_list, env_str
from fhirplatform.release import release_from_checkout

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY", "dev-only-insecure-key" if DEBUG else None)
if not DEBUG and (SECRET_KEY.startswith("dev-only") or len(SECRET_KEY) < 32):
    raise ImproperlyConfigured("SECRET_KEY must be a random string of at least 32 characters")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
# The port `make run` serves on; the public base URL defaults from it, so the commands run
# beside the server print the URLs it answers on.
PORT = env_int("PORT", 8000, minimum=1)
# Absolute URLs (token endpoint, FHIR base, Bundle links) are built from this, never from Host.
PUBLIC_BASE_URL = env_str("PUBLIC_BASE_URL", "").rstrip("/") or f"http://localhost:{PORT}"
if not PUBLIC_BASE_URL.startswith(("http://", "https://")):
    raise ImproperlyConfigured("PUBLIC_BASE_URL must be an http:// or https:// URL")
# What the audit trail records as the code release (fhirplatform/release.py).
CODE_RELEASE = env_str("CODE_RELEASE", "") or release_from_checkout()
# Only scripts/bench_audit_settings.py turns it on (the audit app refuses to start with it
# anywhere else): what the audit trail costs is measured against the same server without.
AUDIT_DISABLED_FOR_BENCHMARK = False
# Retention (audit/archiving.py): where archives are written, how many events one holds
# at most, and how long the public trail keeps its sealed blocks live (a tenant's own
# trail: Tenant.audit_retention_days).
AUDIT_ARCHIVE_DIR = env_str("AUDIT_ARCHIVE_DIR", "") or str(BASE_DIR / ".data" / "audit-archive")
AUDIT_ARCHIVE_MAX_EVENTS = env_int("AUDIT_ARCHIVE_MAX_EVENTS", 100_000, minimum=1)
AUDIT_PUBLIC_RETENTION_DAYS = env_int("AUDIT_PUBLIC_RETENTION_DAYS", 2190, minimum=1)
# The events of requests the refusal gate answers before Django (audit/deferred.py): how
# often each process writes them, and how many it queues at most (past that: counted).
AUDIT_DEFERRED_FLUSH_SECONDS = env_int("AUDIT_DEFERRED_FLUSH_SECONDS", 1, minimum=1)
AUDIT_DEFERRED_MAX_EVENTS = env_int("AUDIT_DEFERRED_MAX_EVENTS", 10_000, minimum=1)
AUDIT_DEFERRED_BACKGROUND_FLUSH = env_bool("AUDIT_DEFERRED_BACKGROUND_FLUSH", True)

# `tenants` comes first so its create_tenant command wins over django-tenants' own.
SHARED_APPS = [
    "tenants",
    "django_tenants",
    "fhirplatform.limits",
    "fhirplatform.cache",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "audit",  # the public trail: refusals with no trusted tenant, governance actions
]
TENANT_APPS = [
    "fhirplatform.fhir",
    "fhirplatform.fhir.search",
    "consent",
    "audit",  # the tenant's own trail
]
INSTALLED_APPS = SHARED_APPS + [app for app in TENANT_APPS if app not in SHARED_APPS]

TENANT_MODEL = "tenants.Tenant"
TENANT_DOMAIN_MODEL = "tenants.Domain"
DATABASE_ROUTERS = ("django_tenants.routers.TenantSyncRouter",)

MIDDLEWARE = [
    "fhirplatform.middleware.RequestContextMiddleware",
    "fhirplatform.middleware.PublicSchemaMiddleware",
    "fhirplatform.middleware.DatabaseFaultMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Sessions, CSRF, the user and messages serve the admin and the portal; the API's
    # requests skip them (fhirplatform.middleware.for_browsers).
    "fhirplatform.middleware.BrowserSessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "fhirplatform.middleware.BrowserCsrfViewMiddleware",
    "fhirplatform.middleware.BrowserAuthenticationMiddleware",
    "fhirplatform.middleware.BrowserMessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "fhirplatform.urls"
WSGI_APPLICATION = "fhirplatform.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

_database = dj_database_url.parse(
    env_str("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/fhirplatform"),
    conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60),
)
if not _database["ENGINE"].endswith("postgresql"):
    raise ImproperlyConfigured("DATABASE_URL must point at PostgreSQL")
# django-tenants' backend with the schema set per transaction (SET LOCAL), never per
# session: safe behind a pooler in transaction mode (README "Operations").
_database["ENGINE"] = "fhirplatform.db.backend"
# A pooler between the platform and PostgreSQL: "none", "session" or "transaction"
# (PgBouncer's pool_mode). "statement" pooling cannot hold a transaction, and every
# write and every tenant read is one: refused.
DATABASE_POOLER = env_str("DATABASE_POOLER", "none").strip().lower()
if DATABASE_POOLER not in {"none", "session", "transaction"}:
    raise ImproperlyConfigured(
        f"DATABASE_POOLER={DATABASE_POOLER!r}: use none, session or transaction "
        "(statement pooling is not supported)"
    )
# No server-side prepared statements: a pooler hands a statement prepared on one server
# connection to another. (Django's default since 5.0; stated so nobody turns it on.)
_database["OPTIONS"] = {**_database.get("OPTIONS", {}), "prepare_threshold": None}
# A server-side cursor (QuerySet.iterator()) opened outside a transaction is held across
# transactions, which a transaction pooler does not keep on one server connection.
_database["DISABLE_SERVER_SIDE_CURSORS"] = DATABASE_POOLER == "transaction"
DATABASES = {"default": _database}
# Runs of a transaction PostgreSQL aborts as a deadlock victim or serialization failure
# before the request is answered 503 (fhirplatform/db/transactions.py).
DATABASE_TRANSACTION_ATTEMPTS = env_int("DATABASE_TRANSACTION_ATTEMPTS", 3, minimum=1)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "fp",
        "OPTIONS": {"socket_timeout": 0.5, "socket_connect_timeout": 0.5},
    },
}

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", REDIS_URL)
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT: Path | None = BASE_DIR / ".data" / "static"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "UNAUTHENTICATED_USER": None,
    "EXCEPTION_HANDLER": "fhirplatform.fhir.http.drf_exception_handler",
    "DEFAULT_RENDERER_CLASSES": [
        "fhirplatform.fhir.http.FhirJSONRenderer",
        "fhirplatform.fhir.http.PlainJSONRenderer",
    ],
    "DEFAULT_PARSER_CLASSES": [
        "fhirplatform.fhir.http.FhirJSONParser",
        "fhirplatform.fhir.http.PlainJSONParser",
    ],
}

# Identity: access tokens never live longer than 300 seconds (SMART Backend Services).
ACCESS_TOKEN_LIFETIME_SECONDS = env_int("ACCESS_TOKEN_LIFETIME_SECONDS", 300, minimum=30)
if ACCESS_TOKEN_LIFETIME_SECONDS > 300:
    raise ImproperlyConfigured("ACCESS_TOKEN_LIFETIME_SECONDS must be at most 300")
# A checked token is kept in process (tenants/token_cache.py) and re-read after a revocation
# at once; this bounds how long an entry lives should a revocation's notice be lost.
TOKEN_CACHE_SECONDS = env_int("TOKEN_CACHE_SECONDS", 60, minimum=1)
CLIENT_SECRET_ROTATION_GRACE_SECONDS = env_int("CLIENT_SECRET_ROTATION_GRACE_SECONDS", 86400)
TOKEN_RATE_LIMIT_PER_CLIENT = env_str("TOKEN_RATE_LIMIT_PER_CLIENT", "30/m")
TOKEN_RATE_LIMIT_PER_IP = env_str("TOKEN_RATE_LIMIT_PER_IP", "60/m")
# Clients' registered JWKS URLs (tenants/jwks_fetch.py): timeouts of one fetch, how long a
# fetched key set is kept per process, and the least time between two fetches of one URL
# (an unknown kid refetches, but never more often). Loopback over http: demo and tests only.
JWKS_URL_CONNECT_TIMEOUT_SECONDS = env_int("JWKS_URL_CONNECT_TIMEOUT_SECONDS", 3, minimum=1)
JWKS_URL_READ_TIMEOUT_SECONDS = env_int("JWKS_URL_READ_TIMEOUT_SECONDS", 3, minimum=1)
JWKS_URL_CACHE_SECONDS = env_int("JWKS_URL_CACHE_SECONDS", 300, minimum=1)
JWKS_URL_REFRESH_SECONDS = env_int("JWKS_URL_REFRESH_SECONDS", 10, minimum=1)
JWKS_URL_ALLOW_LOOPBACK_HTTP = env_bool("JWKS_URL_ALLOW_LOOPBACK_HTTP", False)
RATELIMIT_USE_CACHE = "default"

# Rate limits (fhirplatform/limits): the engine's own Redis connection and its knobs.
# Refused (401/403) FHIR requests allowed per client address, before 429 (django-ratelimit syntax).
LIMITS_REFUSALS_PER_IP = env_str("LIMITS_REFUSALS_PER_IP", "120/m")
LIMITS_REDIS_URL = env_str("LIMITS_REDIS_URL", "") or REDIS_URL
LIMITS_REDIS_TIMEOUT_MS = env_int("LIMITS_REDIS_TIMEOUT_MS", 250, minimum=10)
LIMITS_REDIS_RETRY_SECONDS = env_int("LIMITS_REDIS_RETRY_SECONDS", 1, minimum=1)
LIMITS_FALLBACK_PERCENT = env_int("LIMITS_FALLBACK_PERCENT", 25, minimum=1)
LIMITS_CONFIG_CACHE_SECONDS = env_int("LIMITS_CONFIG_CACHE_SECONDS", 3, minimum=1)
LIMITS_LEASE_SECONDS = env_int("LIMITS_LEASE_SECONDS", 60, minimum=1)
LIMITS_ADAPTIVE_MIN = env_int("LIMITS_ADAPTIVE_MIN", 16, minimum=1)
LIMITS_ADAPTIVE_MAX = env_int("LIMITS_ADAPTIVE_MAX", 400, minimum=1)
# A finished request's slots are given back with the process's next admission; an idle
# process's flusher sends them after this many milliseconds.
LIMITS_RELEASE_DELAY_MS = env_int("LIMITS_RELEASE_DELAY_MS", 5)
# A Redis refusal on a rate or daily limit is remembered in process at most this long
# (0: never), so a flooding client is refused without a Redis call meanwhile.
LIMITS_REFUSAL_MEMO_SECONDS = env_int("LIMITS_REFUSAL_MEMO_SECONDS", 1)
# A client sending again while refused has its connection's next request read this many
# milliseconds later at most, never past the refusal (0: at once; fhirplatform/slowdown.py).
LIMITS_FLOOD_DELAY_MS = env_int("LIMITS_FLOOD_DELAY_MS", 500)
FHIR_MAX_COUNT = env_int("FHIR_MAX_COUNT", 1000, minimum=1)
LIMITS_BUNDLE_MAX_ENTRIES = env_int("LIMITS_BUNDLE_MAX_ENTRIES", 500, minimum=1)
LIMITS_EVENTS_BACKGROUND_FLUSH = env_bool("LIMITS_EVENTS_BACKGROUND_FLUSH", True)
IDEMPOTENCY_TTL_SECONDS = env_int("IDEMPOTENCY_TTL_SECONDS", 86400, minimum=60)

# Response and semantic cache (fhirplatform/cache). Correctness never depends on these:
# entries are checked against generations on every hit; Redis down means no cache.
CACHE_REDIS_URL = env_str("CACHE_REDIS_URL", "") or REDIS_URL
# A cache call slower than this counts as "Redis down": requests bypass the cache for
# CACHE_REDIS_RETRY_SECONDS (one timeout per few seconds, not one per request).
CACHE_REDIS_TIMEOUT_MS = env_int("CACHE_REDIS_TIMEOUT_MS", LIMITS_REDIS_TIMEOUT_MS, minimum=10)
CACHE_REDIS_RETRY_SECONDS = env_int("CACHE_REDIS_RETRY_SECONDS", 2, minimum=1)
# Larger answers are served but not cached.
CACHE_MAX_PAYLOAD_BYTES = env_int("CACHE_MAX_PAYLOAD_BYTES", 1024 * 1024, minimum=1024)
# Defaults of a tenant without a rule for the type: clinical (patient compartment) types,
# never stale; reference-data types, longer and stale-while-revalidate.
CACHE_PHI_TTL_SECONDS = env_int("CACHE_PHI_TTL_SECONDS", 30)
CACHE_REFERENCE_TTL_SECONDS = env_int("CACHE_REFERENCE_TTL_SECONDS", 300)
CACHE_REFERENCE_SWR_SECONDS = env_int("CACHE_REFERENCE_SWR_SECONDS", 300)
# The largest ttl (and swr) an operator may set in a tenant's cache rule.
CACHE_MAX_TTL_SECONDS = env_int("CACHE_MAX_TTL_SECONDS", 86400, minimum=1)
# The one request refreshing a stale entry holds its refresh lock at most this long.
CACHE_REFRESH_LOCK_SECONDS = env_int("CACHE_REFRESH_LOCK_SECONDS", 10, minimum=1)
# A generation token expires this long after it was set; a re-created one costs misses only.
CACHE_GENERATION_TTL_SECONDS = env_int("CACHE_GENERATION_TTL_SECONDS", 7 * 86400, minimum=3600)
# The longest a process decides consent from its in-process snapshot of a tenant's policy
# and Consents without reading them again, should a generation bump have been lost
# (consent/snapshots.py); normally a bump replaces the snapshot on the next request.
CONSENT_SNAPSHOT_MAX_SECONDS = env_int("CONSENT_SNAPSHOT_MAX_SECONDS", 30, minimum=1)

FHIR_MAX_PAYLOAD_BYTES = env_int("FHIR_MAX_PAYLOAD_BYTES", 5 * 1024 * 1024, minimum=1024)
# A conditional delete (DELETE [base]/Type?criteria) matching several resources deletes
# them all (at most fhirplatform.fhir.services.CONDITIONAL_DELETE_MAX, 412 beyond) when
# true; when false, several matches are a 412 (docs/fhir.md).
FHIR_CONDITIONAL_DELETE_MULTIPLE = env_bool("FHIR_CONDITIONAL_DELETE_MULTIPLE", False)
DATA_UPLOAD_MAX_MEMORY_SIZE = FHIR_MAX_PAYLOAD_BYTES + 1024

# Bulk export (fhirplatform/fhir/export, docs/bulk-export.md). Files go to the "exports"
# storage: a folder by default, an S3-compatible bucket when EXPORT_S3_BUCKET is set.
EXPORT_DIR = env_str("EXPORT_DIR", "") or str(BASE_DIR / ".data" / "exports")
EXPORT_S3_BUCKET = env_str("EXPORT_S3_BUCKET", "")
# Resources per NDJSON file; a type with more is split into several.
EXPORT_FILE_MAX_RESOURCES = env_int("EXPORT_FILE_MAX_RESOURCES", 50_000, minimum=1)
# How long a finished export's files can be downloaded before they are deleted.
EXPORT_RETENTION_SECONDS = env_int("EXPORT_RETENTION_SECONDS", 86400, minimum=60)
# Retry-After while a job runs: polling sooner is answered 429.
EXPORT_POLL_SECONDS = env_int("EXPORT_POLL_SECONDS", 2, minimum=1)
# A running job's worker renews its heartbeat between batches; a job whose heartbeat is
# older than this belongs to a worker that died, and is resumed (up to
# EXPORT_MAX_ATTEMPTS runs in all) or failed.
EXPORT_STALE_SECONDS = env_int("EXPORT_STALE_SECONDS", 120, minimum=5)
EXPORT_MAX_ATTEMPTS = env_int("EXPORT_MAX_ATTEMPTS", 3, minimum=1)
# Rows the worker reads per batch from its server-side cursor; it may rest after each, so
# small batches interleave it finely with interactive requests (500 kept another
# tenant's read p95 lower than 2000 did, at the same export rate: docs/benchmarks.md).
EXPORT_BATCH_ROWS = env_int("EXPORT_BATCH_ROWS", 500, minimum=1)
# How long the worker pauses, batch after batch, while interactive traffic holds the
# adaptive limit's export share (fhirplatform/limits/costs.py CRITICALITY_SHARE).
EXPORT_YIELD_SECONDS = env_int("EXPORT_YIELD_MS", 250, minimum=1) / 1000
# While any request is in flight, the worker rests this many times as long as it worked
# on its last batch (percent: 200 = it works a third of the time; 0 = never), pacing.py.
# 200 kept another tenant's read p95 within 1.5x of its own during an export, where 100
# did not always (docs/benchmarks.md).
EXPORT_INTERACTIVE_YIELD = env_int("EXPORT_INTERACTIVE_YIELD_PERCENT", 200) / 100
_exports_storage: dict[str, object] = (
    {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": EXPORT_S3_BUCKET,
            "endpoint_url": env_str("EXPORT_S3_ENDPOINT_URL", "") or None,
            "region_name": env_str("EXPORT_S3_REGION", "") or None,
            "location": env_str("EXPORT_S3_PREFIX", "exports"),
            "default_acl": None,
            "file_overwrite": True,
        },
    }
    if EXPORT_S3_BUCKET
    else {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": EXPORT_DIR},
    }
)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    "exports": _exports_storage,
}

# Where seed_demo keeps the demo credentials it made (local demo only).
DEMO_CREDENTIALS_FILE = env_str(
    "DEMO_CREDENTIALS_FILE", str(BASE_DIR / ".data" / "demo-credentials.json")
)

# /metrics answers loopback callers, or callers presenting this bearer token.
METRICS_TOKEN = env_str("METRICS_TOKEN", "")

LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_context": {"()": "fhirplatform.context.RequestContextLogFilter"}},
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "filters": ["request_context"],
        },
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "django.server": {"level": "WARNING"},
        # Django warns once more for every 4xx ("Not Found: ...", "Too Many Requests: ...");
        # the request line (fhirplatform.request) already has the status, and a client
        # flooding past its limit would make the log cost more than the refusal.
        "django.request": {"level": "ERROR"},
    },
}
