"""The demo platform: an operator, a provider and a payer tenant, a sandbox tenant,
a demo partner with a secret-based client and a key-based client, and their data; in the
provider tenant, one patient's Consent that keeps the analytics client out, and the policy
test that says so; in every tenant with patients, a few Groups of them (the cohorts a
`Group/<id>/$export` names).

Idempotent: a second run reuses what exists. Secrets are only known when they are
made, so they are kept for the local demo in .data/demo-credentials.json (0600).
"""

import json
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import transaction
from jwt.algorithms import RSAAlgorithm

from consent.codes import CLIENT_ID_SYSTEM
from consent.models import PolicyTest
from consent.services import policy_test_create
from fhirplatform.fhir.loading import fhir_generate
from fhirplatform.fhir.models import Resource
from fhirplatform.fhir.services import resource_create
from fhirplatform.schemas import tenant_schema
from tenants.models import ApiClient, Partner, Tenant
from tenants.selectors import tenant_fhir_base, token_endpoint_url
from tenants.services import (
    client_create,
    credential_hash,
    partner_get_or_create,
    partner_member_add,
    tenant_create,
)

DEMO_PARTNER = "Acme Health Apps"
DEMO_TENANTS = [
    # slug, name, plan
    ("demo-provider", "Riverside Health (provider)", "premium"),
    ("demo-payer", "Summit Health Plan (payer)", "standard"),
    ("sandbox", "Developer sandbox", "sandbox"),
]
OPERATOR_USERNAME = "operator"
AUDITOR_USERNAME = "auditor"
# The auditor reads what operators manage (tenants, clients and grants, rate limits) and
# the audit trails.
AUDITOR_APPS = ("tenants", "limits", "audit")
PARTNER_USERNAME = "acme-dev"
CONSENT_TENANT = "demo-provider"
OPTED_OUT_CLIENT = "analytics-backend"  # the demo client a patient's Consent keeps out
CONSENT_TEST_NAME = "A patient who opted out of analytics is not shown to Acme Analytics"
# A demo Group is found again by this identifier, so a re-run neither duplicates nor renames it.
DEMO_GROUP_SYSTEM = "urn:fhirplatform:demo-group"


@dataclass(frozen=True)
class DemoGroup:
    key: str  # the identifier value under DEMO_GROUP_SYSTEM
    name: str
    size: int  # members wanted; a tenant with fewer patients gets fewer
    start_percent: int  # where in the tenant's patients (in load order) the members start


DEMO_GROUPS = (
    # The first two overlap (a patient may be in several cohorts). Only the first holds the
    # provider tenant's opted-out patient (at the default population): one Group the demo
    # Consent touches, two it does not.
    DemoGroup("care-management", "Care management panel", size=25, start_percent=0),
    DemoGroup("wellness-outreach", "Annual wellness outreach", size=20, start_percent=5),
    DemoGroup("quality-cohort", "Quality measure cohort", size=30, start_percent=50),
)


@dataclass
class DemoReport:
    admin_url: str
    token_endpoint: str
    users: dict[str, str] = field(default_factory=dict)
    tenants: dict[str, str] = field(default_factory=dict)
    clients: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    consent: str | None = None  # the demo patient's opt-out, once there is data
    # tenant slug -> "Group/<id> <name> (<n> members)", once the tenant has patients
    groups: dict[str, list[str]] = field(default_factory=dict)


def _credentials_path() -> Path:
    return Path(settings.DEMO_CREDENTIALS_FILE)


def _load_credentials() -> dict[str, Any]:
    path = _credentials_path()
    return json.loads(path.read_text()) if path.exists() else {}


def _private_file_write(path: Path, text: str) -> None:
    """Secrets and keys on disk: readable by this user only, folder made if missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)


def _save_credentials(credentials: dict[str, Any]) -> None:
    _private_file_write(_credentials_path(), json.dumps(credentials, indent=2))


def _user(username: str, credentials: dict[str, Any], **flags: bool) -> str:
    user_model = get_user_model()
    user = user_model.objects.filter(username=username).first()
    password = credentials.get("users", {}).get(username)
    # The file may be from another checkout sharing this database: trust it only if it works.
    if user is None or password is None or not user.check_password(password):
        password = secrets.token_urlsafe(12)
        user = user or user_model(username=username, email=f"{username}@example.org")
        for name, value in flags.items():
            setattr(user, name, value)
        user.set_password(password)
        user.save()
    credentials.setdefault("users", {})[username] = password
    return password


def _rsa_key_pair(kid: str) -> tuple[str, dict[str, Any]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    public_jwk.update(kid=kid, alg="RS384", use="sig")
    return private_pem, {"keys": [public_jwk]}


def _private_jwks_write(record: dict[str, Any], key: str) -> None:
    """The client's private key also as a JWKS (kid, alg and key_ops set), the form Bulk
    Data clients such as smart-fetch take: a PEM alone would be sent under its thumbprint
    as kid, which is not the kid registered for it."""
    pem = Path(record["private_key_file"]).read_bytes()
    private_key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(private_key, rsa.RSAPrivateKey)  # the demo makes RSA keys only
    jwk = json.loads(RSAAlgorithm.to_jwk(private_key))
    jwk.update(kid=record["kid"], alg="RS384", key_ops=["sign"])
    path = _credentials_path().parent / f"{key}-private.jwks"
    _private_file_write(path, json.dumps({"keys": [jwk]}, indent=2))
    record["private_jwks_file"] = str(path)


def _known_client_works(known: dict[str, Any]) -> bool:
    """The recorded credentials still authenticate this client against this database."""
    client = ApiClient.objects.filter(client_id=known["client_id"]).first()
    if client is None:
        return False
    if known.get("client_secret"):
        return client.secrets.filter(secret_hash=credential_hash(known["client_secret"])).exists()
    return Path(known.get("private_key_file", "")).is_file()


def _demo_client(
    credentials: dict[str, Any],
    key: str,
    *,
    name: str,
    scopes: str,
    tenants: list[str],
    plan: str,
    with_key: bool = False,
) -> dict[str, Any]:
    known = credentials.setdefault("clients", {}).get(key)
    if known and _known_client_works(known):
        if known.get("private_key_file") and not Path(known.get("private_jwks_file", "")).is_file():
            _private_jwks_write(known, key)
        return dict(known)
    private_pem, jwks = _rsa_key_pair(f"{key}-1") if with_key else (None, None)
    issued = client_create(
        partner_name=DEMO_PARTNER,
        tenant_slugs=tenants,
        scopes=scopes,
        plan_name=plan,
        jwks=jwks,
        name=name,
        with_secret=not with_key,
        purposes=["TREAT"],
    )
    record: dict[str, Any] = {
        "name": name,
        "client_id": issued.client.client_id,
        "client_secret": issued.client_secret,
        "auth_method": "private_key_jwt" if with_key else "client_secret_basic",
        "tenants": {grant.tenant.slug: tenant_fhir_base(grant.tenant) for grant in issued.grants},
        "scope": scopes,
    }
    if private_pem:
        key_path = _credentials_path().parent / f"{key}-private.pem"
        _private_file_write(key_path, private_pem)
        record["private_key_file"] = str(key_path)
        record["kid"] = f"{key}-1"
        _private_jwks_write(record, key)
    credentials["clients"][key] = record
    return record


def demo_seed(*, patients: int = 0, observations_per_patient: int = 0) -> DemoReport:
    """Create (or find) the demo platform and return everything a newcomer needs to use it."""
    credentials = _load_credentials()
    base = settings.PUBLIC_BASE_URL
    report = DemoReport(
        admin_url=f"{base}/admin/",
        token_endpoint=token_endpoint_url(),
    )
    report.users[OPERATOR_USERNAME] = _user(
        OPERATOR_USERNAME, credentials, is_staff=True, is_superuser=True
    )
    report.users[AUDITOR_USERNAME] = _user(AUDITOR_USERNAME, credentials, is_staff=True)
    auditor = get_user_model().objects.get(username=AUDITOR_USERNAME)
    auditor.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label__in=AUDITOR_APPS, codename__startswith="view_"
        )
    )
    report.users[PARTNER_USERNAME] = _user(PARTNER_USERNAME, credentials)
    partner: Partner = partner_get_or_create(name=DEMO_PARTNER)
    partner_member_add(
        partner=partner, user=get_user_model().objects.get(username=PARTNER_USERNAME)
    )

    for slug, name, plan in DEMO_TENANTS:
        tenant = Tenant.objects.filter(slug=slug).first() or tenant_create(
            slug=slug, name=name, plan_name=plan
        )
        report.tenants[slug] = tenant_fhir_base(tenant)

    report.clients = [
        _demo_client(
            credentials,
            "care-coordination",
            name="Acme Care Coordination",
            scopes="system/*.cruds",
            tenants=["demo-provider", "demo-payer"],
            plan="premium",
        ),
        _demo_client(
            credentials,
            "analytics-backend",
            name="Acme Analytics (SMART Backend Services)",
            scopes="system/*.rs",
            tenants=["demo-provider", "demo-payer"],
            plan="standard",
            with_key=True,
        ),
        _demo_client(
            credentials,
            "sandbox-app",
            name="Acme Sandbox App",
            scopes="system/*.cruds",
            tenants=["sandbox"],
            plan="sandbox",
        ),
    ]
    _save_credentials(credentials)
    report.data = _demo_data(patients=patients, observations_per_patient=observations_per_patient)
    report.consent = _demo_consent(credentials["clients"][OPTED_OUT_CLIENT]["client_id"])
    report.groups = _demo_groups()
    return report


def _opt_out(patient_id: str, client_id: str) -> dict[str, Any]:
    """A patient's Consent: share with everyone, except the named client."""
    recipient = {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                "code": "IRCP",
            }
        ]
    }
    actor = {
        "role": recipient,
        "reference": {"identifier": {"system": CLIENT_ID_SYSTEM, "value": client_id}},
    }
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient_id}"},
        "provision": {"type": "permit", "provision": [{"type": "deny", "actor": [actor]}]},
    }


def _demo_consent(client_id: str) -> str | None:
    """The provider tenant's first patient opts out of analytics (once), through the same
    store as a FHIR create, and a policy test states the decision an auditor may check."""
    tenant = Tenant.objects.get(slug=CONSENT_TENANT)
    with tenant_schema(tenant):
        patients = Resource.objects.filter(resource_type="Patient", deleted=False)
        first = patients.order_by("pk").values_list("logical_id", flat=True).first()
        if first is None:
            return None
        opt_out = {
            "content__patient__reference": f"Patient/{first}",
            "content__provision__provision__0__actor__0__reference__identifier__value": client_id,
        }
        if not Resource.objects.filter(resource_type="Consent", deleted=False, **opt_out).exists():
            with transaction.atomic():
                content = _opt_out(first, client_id)
                resource_create(resource_type="Consent", content=content, source="demo")
        tested = PolicyTest.objects.filter(name=CONSENT_TEST_NAME).exists()
    if not tested:
        policy_test_create(
            tenant=tenant,
            by="demo",
            name=CONSENT_TEST_NAME,
            client_id=client_id,
            resource_type="Observation",
            expected="deny",
            purpose="TREAT",
            patient_id=first,
        )
    return f"Patient/{first} opted out of {OPTED_OUT_CLIENT} ({client_id}) in {CONSENT_TENANT}"


def _demo_data(*, patients: int, observations_per_patient: int) -> dict[str, Any]:
    """Generate a synthetic population into each demo tenant that has no data yet."""
    loaded: dict[str, Any] = {}
    for slug, _, _ in DEMO_TENANTS:
        tenant = Tenant.objects.get(slug=slug)
        with tenant_schema(tenant):
            existing = Resource.objects.filter(deleted=False).count()
        if existing or patients <= 0:
            loaded[slug] = f"{existing} resources"
            continue
        # The sandbox gets a small population; the production-like tenants the full one.
        count = max(1, patients // 10) if slug == "sandbox" else patients
        report = fhir_generate(
            tenant=tenant,
            patients=count,
            observations_per_patient=observations_per_patient,
            seed=sum(map(ord, slug)),
        )
        loaded[slug] = (
            f"{report.resources} resources generated in {report.seconds:.1f} s ({count} patients)"
        )
    return loaded


def _group_content(group: DemoGroup, patient_ids: list[str]) -> dict[str, Any]:
    return {
        "resourceType": "Group",
        "identifier": [{"system": DEMO_GROUP_SYSTEM, "value": group.key}],
        "active": True,
        "type": "person",
        "actual": True,
        "name": group.name,
        "quantity": len(patient_ids),
        "member": [{"entity": {"reference": f"Patient/{pid}"}} for pid in patient_ids],
    }


def _group_members(group: DemoGroup, patient_ids: list[str]) -> list[str]:
    start = len(patient_ids) * group.start_percent // 100
    return patient_ids[start : start + group.size]


def _demo_groups() -> dict[str, list[str]]:
    """Each demo tenant with patients gets the DEMO_GROUPS cohorts of them (once), through
    the same store as a FHIR create; a Group already there is kept as it is."""
    made: dict[str, list[str]] = {}
    for slug, _, _ in DEMO_TENANTS:
        tenant = Tenant.objects.get(slug=slug)
        with tenant_schema(tenant), transaction.atomic():
            patient_ids = list(
                Resource.objects.filter(resource_type="Patient", deleted=False)
                .order_by("pk")
                .values_list("logical_id", flat=True)
            )
            if not patient_ids:
                continue
            groups = Resource.objects.filter(resource_type="Group", deleted=False)
            for group in DEMO_GROUPS:
                identifier = [{"system": DEMO_GROUP_SYSTEM, "value": group.key}]
                stored = groups.filter(content__identifier__contains=identifier).first()
                if stored is None:
                    content = _group_content(group, _group_members(group, patient_ids))
                    stored = resource_create(resource_type="Group", content=content, source="demo")
                members = len(stored.content.get("member", []))
                made.setdefault(slug, []).append(
                    f"Group/{stored.logical_id} {group.name} ({members} members)"
                )
    return made


def demo_report_dict(report: DemoReport) -> dict[str, Any]:
    return asdict(report)
