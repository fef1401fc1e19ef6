"""manage.py audit_verify --tenant SLUG | --public [--json]: recompute a trail's digests,
chain and seals; exit 1 naming the first problem (audit/verification.py)."""

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.verification import audit_verify
from fhirplatform.schemas import schema_public, tenant_schema
from tenants.models import Tenant


class Command(BaseCommand):
    help = "Verify a tenant's (or the public) audit trail: digests, chain and seals."

    def add_arguments(self, parser: CommandParser) -> None:
        where = parser.add_mutually_exclusive_group(required=True)
        where.add_argument("--tenant", help="the tenant's slug")
        where.add_argument("--public", action="store_true", help="the public trail")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["public"]:
            schema_public()
            report = audit_verify(schema="public")
        else:
            tenant = Tenant.objects.filter(slug=options["tenant"]).first()
            if tenant is None:
                raise CommandError(f"no tenant {options['tenant']!r}")
            with tenant_schema(tenant):
                report = audit_verify(schema=tenant.schema_name)
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict(), indent=2))
        else:
            self.stdout.write(
                f"{report.schema}: {report.events} events, {report.seals} seals, "
                f"{report.unsealed} not sealed yet; {report.events_per_second:.0f} events/s"
            )
            for problem in report.problems:
                self.stdout.write(f"PROBLEM {problem}")
            self.stdout.write("OK" if report.ok else f"FAILED: {report.problems[0]}")
        if not report.ok:
            raise SystemExit(1)
