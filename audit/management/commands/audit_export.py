"""manage.py audit_export --tenant SLUG | --public --since T --until T [--output FILE]:
a trail's events of [since, until) as NDJSON, oldest first. The export is itself
recorded in that trail (interaction `export`, actor: the operating-system user)."""

import getpass
import json
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from audit.models import Interaction
from audit.selectors import events_between
from audit.services import AuditRecord, audit_write
from fhirplatform.schemas import schema_public, tenant_schema
from tenants.models import Tenant


def _instant(text: str, name: str) -> datetime:
    """An ISO date or date-time; a date is its midnight UTC, a naive time is UTC."""
    parsed = parse_datetime(text)
    if parsed is None and (day := parse_date(text)) is not None:
        parsed = datetime(day.year, day.month, day.day)
    if parsed is None:
        raise CommandError(f"--{name} {text!r} is not an ISO date or date-time")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class Command(BaseCommand):
    help = "Write a tenant's (or the public) audit events of a period as NDJSON."

    def add_arguments(self, parser: CommandParser) -> None:
        where = parser.add_mutually_exclusive_group(required=True)
        where.add_argument("--tenant", help="the tenant's slug")
        where.add_argument("--public", action="store_true", help="the public trail")
        parser.add_argument("--since", required=True, help="ISO date or date-time (inclusive)")
        parser.add_argument("--until", required=True, help="ISO date or date-time (exclusive)")
        parser.add_argument("--output", type=Path, help="a file (default: standard output)")

    def handle(self, *args: Any, **options: Any) -> None:
        since, until = _instant(options["since"], "since"), _instant(options["until"], "until")
        if until <= since:
            raise CommandError("--until must be after --since")
        tenant = None
        if options["tenant"]:
            tenant = Tenant.objects.filter(slug=options["tenant"]).first()
            if tenant is None:
                raise CommandError(f"no tenant {options['tenant']!r}")
        schema = tenant.schema_name if tenant else "public"
        # Reading the trail is recorded first: an export that cannot be recorded is none.
        audit_write(
            record=AuditRecord(
                recorded=timezone.now(),
                interaction=Interaction.EXPORT,
                status=200,
                tenant=tenant.slug if tenant else "",
                actor=getpass.getuser(),
                resource_type="AuditEvent",
                query=f"audit_export since={since.isoformat()} until={until.isoformat()}",
            ),
            schema=schema,
        )
        count = 0
        with ExitStack() as stack:
            output = options["output"]
            out: TextIO = (
                stack.enter_context(output.open("w")) if output else self.stdout  # type: ignore[assignment]
            )
            for event in _events(tenant, since, until):
                out.write(json.dumps(event) + "\n")
                count += 1
        self.stderr.write(f"{count} events of {schema}")


def _events(tenant: Tenant | None, since: datetime, until: datetime) -> Iterator[dict[str, Any]]:
    if tenant is None:
        schema_public()
        yield from events_between(since=since, until=until)
        return
    with tenant_schema(tenant):
        yield from events_between(since=since, until=until)
