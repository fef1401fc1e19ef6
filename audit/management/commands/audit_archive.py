"""manage.py audit_archive --tenant SLUG | --public [--before T]: archive a trail's sealed
blocks older than its retention (or sealed before T) into compressed NDJSON files, then
let them leave the live tables (audit/archiving.py). Exit 1 when the oldest blocks do not
verify: they stay, for audit_verify to name."""

import getpass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from audit.archiving import ArchiveRefused, archive_root, audit_archive
from audit.management.trails import (
    instant_option,
    trail_arguments,
    trail_entered,
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
            days = tenant.audit_retention_days if tenant else settings.AUDIT_PUBLIC_RETENTION_DAYS
            cutoff = timezone.now() - timedelta(days=days)
        actor = getpass.getuser()
        archives = 0
        while True:
            try:
                with trail_entered(tenant):
                    archive = audit_archive(
                        cutoff=cutoff, actor=actor, tenant=tenant.slug if tenant else ""
                    )
            except ArchiveRefused as refused:
                raise CommandError(f"not archived: {refused}; run audit_verify") from refused
            if archive is None:
                break
            archives += 1
            self.stdout.write(
                f"archive {archive.seq}: seals {archive.first_seal}-{archive.last_seal}, "
                f"{archive.events} events, {archive.size} bytes, "
                f"{archive_root() / archive.path}"
            )
        self.stdout.write(f"{archives} archive(s) written; sealed before {cutoff.isoformat()}")
