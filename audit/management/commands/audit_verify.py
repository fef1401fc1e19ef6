"""manage.py audit_verify --tenant SLUG | --public [--archive] [--json]: recompute a
trail's digests, chain and seals, and with --archive its archives' files; exit 1 naming
the first problem (audit/verification.py)."""

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from audit.management.trails import trail_arguments, trail_tenant
from audit.verification import audit_verify
from fhirplatform.schemas import tenant_or_public_schema


class Command(BaseCommand):
    help = "Verify a tenant's (or the public) audit trail: digests, chain, seals, archives."

    def add_arguments(self, parser: CommandParser) -> None:
        trail_arguments(parser)
        parser.add_argument(
            "--archive",
            action="store_true",
            help="also read every archive's file and check it against its record",
        )
        parser.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        with tenant_or_public_schema(trail_tenant(options)) as schema:
            report = audit_verify(schema=schema, files=options["archive"])
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict(), indent=2))
        else:
            archived = (
                f", {report.archived_events} archived events in their files"
                if options["archive"]
                else ""
            )
            self.stdout.write(
                f"{report.schema}: {report.events} events, {report.seals} seals, "
                f"{report.unsealed} not sealed yet, {report.archives} archives{archived}; "
                f"{report.events_per_second:.0f} events/s"
            )
            for problem in report.problems:
                self.stdout.write(f"PROBLEM {problem}")
            self.stdout.write("OK" if report.ok else f"FAILED: {report.problems[0]}")
        if not report.ok:
            raise SystemExit(1)
