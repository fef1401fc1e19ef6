"""manage.py audit_archive --tenant SLUG | --public [--before T]: archive a trail's sealed
blocks older than its retention (or sealed before T) into compressed NDJSON files, then
let them leave the live tables (audit/archiving.py). Exit 1 when the oldest blocks do not
verify: they stay, for audit_verify to name."""

import getpass
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from audit.archiving import ArchiveRefused, archive_root, retention_cutoff, trail_archives
from audit.management.trails import (
    instant_option,
    trail_arguments,
    trail_tenant,
)


class Command(BaseCommand):
    help = "Archive a tenant's (or the public) audit blocks older than its retention."

    def add_arguments(self, parser: CommandParser) -> None:
        trail_arguments(parser)
        parser.add_argument(
            "--before",
            help="ISO date or date-time: archive blocks sealed before it (default: the "
            "trail's retention ago)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = trail_tenant(options)
        if options["before"]:
            cutoff = instant_option(options["before"], "before")
        else:
            cutoff = retention_cutoff(tenant, timezone.now())
        archives = 0
        try:
            for archive in trail_archives(tenant=tenant, cutoff=cutoff, actor=getpass.getuser()):
                archives += 1
                self.stdout.write(
                    f"archive {archive.seq}: seals {archive.first_seal}-{archive.last_seal}, "
                    f"{archive.events} events, {archive.size} bytes, "
                    f"{archive_root() / archive.path}"
                )
        except ArchiveRefused as refused:
            raise CommandError(f"not archived: {refused}; run audit_verify") from refused
        self.stdout.write(f"{archives} archive(s) written; sealed before {cutoff.isoformat()}")
