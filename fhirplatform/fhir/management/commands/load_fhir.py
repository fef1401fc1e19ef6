import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from fhirplatform.fhir.loading import LoadError, fhir_load_path
from tenants.models import Tenant


class Command(BaseCommand):
    help = (
        "Load transaction/batch Bundles (.json, .json.gz) and NDJSON (.ndjson, .ndjson.gz) "
        "files, or directories of them, into a tenant."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path")
        parser.add_argument("--tenant", required=True, help="Tenant slug")
        parser.add_argument("--json", action="store_true", help="Print the report as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = Tenant.objects.filter(slug=options["tenant"]).first()
        if tenant is None:
            raise CommandError(f"unknown tenant '{options['tenant']}'")
        try:
            report = fhir_load_path(tenant=tenant, path=Path(options["path"]))
        except LoadError as exc:
            raise CommandError(str(exc)) from None
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict()))
        else:
            self.stdout.write(
                f"loaded {report.resources} resources from {report.files} file(s) into "
                f"{tenant.slug} in {report.seconds:.1f}s ({report.resources_per_second:.0f} "
                "resources/s)"
            )
            for resource_type, count in sorted(report.by_type.items()):
                self.stdout.write(f"  {resource_type}: {count}")
            for failure in report.failures:
                self.stderr.write(f"FAILED {failure}")
        if report.failures:
            raise CommandError(f"{len(report.failures)} file(s) failed to load")
