"""manage.py audit_export --tenant SLUG | --public --since T --until T [--output FILE]:
a trail's events of [since, until) as NDJSON, oldest first. The export is itself
recorded in that trail (interaction `export`, actor: the operating-system user)."""

import getpass
import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TextIO

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from audit.management.trails import (
    instant_option,
    trail_arguments,
    trail_tenant,
)
from audit.models import Interaction
from audit.selectors import events_between
from audit.services import AuditRecord, audit_write
from fhirplatform.schemas import tenant_or_public_schema


class Command(BaseCommand):
    help = "Write a tenant's (or the public) audit events of a period as NDJSON."

    def add_arguments(self, parser: CommandParser) -> None:
        trail_arguments(parser)
        parser.add_argument("--since", required=True, help="ISO date or date-time (inclusive)")
        parser.add_argument("--until", required=True, help="ISO date or date-time (exclusive)")
        parser.add_argument("--output", type=Path, help="a file (default: standard output)")

    def handle(self, *args: Any, **options: Any) -> None:
        since, until = (
            instant_option(options["since"], "since"),
            instant_option(options["until"], "until"),
        )
        if until <= since:
            raise CommandError("--until must be after --since")
        tenant = trail_tenant(options)
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
            with tenant_or_public_schema(tenant):
                for event in events_between(since=since, until=until):
                    out.write(json.dumps(event) + "\n")
                    count += 1
        self.stderr.write(f"{count} events of {schema}")
