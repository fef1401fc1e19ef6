import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenants.selectors import tenant_fhir_base, token_endpoint_url
from tenants.services import DEFAULT_GRANT_PLAN, ProvisioningError, client_create


class Command(BaseCommand):
    help = "Register an API client for a partner with a grant on each --tenant; prints credentials."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--partner", required=True, help="Partner organisation name.")
        parser.add_argument("--tenant", action="append", required=True, dest="tenants")
        parser.add_argument(
            "--scope", required=True, help='e.g. "system/Patient.rs system/Observation.rs"'
        )
        parser.add_argument("--plan", default=DEFAULT_GRANT_PLAN)
        parser.add_argument("--name", default="")
        parser.add_argument("--purpose", action="append", default=[], dest="purposes")
        parser.add_argument("--jwks", type=Path, help="JWKS file with the client's public keys.")
        parser.add_argument(
            "--jwks-url",
            default="",
            help="https URL where the client publishes its public keys (JWKS); "
            "an assertion's jku must name it.",
        )
        parser.add_argument(
            "--no-secret", action="store_true", help="Key-only client (private_key_jwt)."
        )
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        jwks = None
        if options["jwks"]:
            try:
                jwks = json.loads(options["jwks"].read_text())
            except (OSError, ValueError) as exc:
                raise CommandError(f"cannot read JWKS from {options['jwks']}: {exc}") from None
        try:
            issued = client_create(
                partner_name=options["partner"],
                tenant_slugs=options["tenants"],
                scopes=options["scope"],
                plan_name=options["plan"],
                purposes=options["purposes"],
                jwks=jwks,
                jwks_url=options["jwks_url"],
                name=options["name"],
                with_secret=not options["no_secret"],
            )
        except ProvisioningError as exc:
            raise CommandError(str(exc)) from None
        grants = [
            {
                "tenant": grant.tenant.slug,
                "fhir_base_url": tenant_fhir_base(grant.tenant),
                "scope": grant.scopes,
                "plan": grant.plan.name,
            }
            for grant in issued.grants
        ]
        result = {
            "client_id": issued.client.client_id,
            "client_secret": issued.client_secret,
            "partner": issued.client.partner.name,
            "token_endpoint": token_endpoint_url(),
            "auth_methods": (["client_secret_basic"] if issued.client_secret else [])
            + (["private_key_jwt"] if jwks or issued.client.jwks_url else []),
            "jwks_url": issued.client.jwks_url,
            "grants": grants,
        }
        if options["json"]:
            self.stdout.write(json.dumps(result, indent=2))
            return
        self.stdout.write(f"client_id:      {result['client_id']}")
        if issued.client_secret:
            self.stdout.write(f"client_secret:  {issued.client_secret}  (shown once)")
        self.stdout.write(f"token endpoint: {result['token_endpoint']}")
        if issued.client.jwks_url:
            self.stdout.write(f"JWKS URL:       {issued.client.jwks_url}")
        for grant in grants:
            self.stdout.write(f"  {grant['tenant']}: {grant['fhir_base_url']}  [{grant['scope']}]")
