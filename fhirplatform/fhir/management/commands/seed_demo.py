import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from fhirplatform.demo import demo_report_dict, demo_seed


class Command(BaseCommand):
    help = "Create (or find) the demo tenants, partner, clients, users and data; print them."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--patients", type=int, default=200, help="Synthetic patients per tenant."
        )
        parser.add_argument(
            "--observations", type=int, default=20, help="Observations per patient."
        )
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        report = demo_seed(
            patients=options["patients"], observations_per_patient=options["observations"]
        )
        if options["json"]:
            self.stdout.write(json.dumps(demo_report_dict(report), indent=2))
            return
        out = self.stdout.write
        out(f"Admin:  {report.admin_url}")
        for username, password in report.users.items():
            out(f"  user {username:10} password {password}")
        out(f"Token endpoint: {report.token_endpoint} (each tenant's own: /oauth/<tenant>/token)")
        out("Tenants:")
        for slug, base in report.tenants.items():
            out(f"  {slug:14} {base}")
        out("Clients (partner Acme Health Apps):")
        for client in report.clients:
            out(f"  {client['name']} [{client['auth_method']}]")
            out(f"    client_id     {client['client_id']}")
            if client.get("client_secret"):
                out(f"    client_secret {client['client_secret']}")
            if client.get("private_key_file"):
                out(f"    private key   {client['private_key_file']} (kid {client['kid']})")
                out(f"    as a JWKS     {client['private_jwks_file']}")
            out(f"    scope         {client['scope']}  tenants: {', '.join(client['tenants'])}")
        for slug, loaded in report.data.items():
            out(f"Data in {slug}: {loaded}")
        for slug, groups in report.groups.items():
            for group in groups:
                out(f"Group in {slug}: {group} (bulk export: Group/<id>/$export)")
        if report.consent:
            out(f"Consent: {report.consent} (docs/consent.md)")
