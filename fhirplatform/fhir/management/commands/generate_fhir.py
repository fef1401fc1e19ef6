import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from fhirplatform.fhir.loading import LoadError, fhir_generate
from tenants.models import Tenant


class Command(BaseCommand):
    help = (
        "Generate a deterministic synthetic population (patients, encounters, observations, "
        "conditions, medication requests) into a tenant."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", required=True, help="Tenant slug")
        parser.add_argument("--patients", type=int, default=100)
        parser.add_argument("--observations-per-patient", type=int, default=20)
        parser.add_argument("--seed", type=int, default=1)
        parser.add_argument("--json", action="store_true", help="Print the report as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = Tenant.objects.filter(slug=options["tenant"]).first()
        if tenant is None:
            raise CommandError(f"unknown tenant '{options['tenant']}'")
        if options["patients"] < 1 or options["observations_per_patient"] < 0:
            raise CommandError("--patients must be >= 1 and --observations-per-patient >= 0")
        try:
            report = fhir_generate(
                tenant=tenant,
                patients=options["patients"],
                observations_per_patient=options["observations_per_patient"],
                seed=options["seed"],
            )
        except LoadError as exc:
            raise CommandError(str(exc)) from None
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict()))
            return
        self.stdout.write(
            f"generated {report.resources} resources into {tenant.slug} in "
            f"{report.seconds:.1f}s ({report.resources_per_second:.0f} resources/s)"
        )
        for resource_type, count in sorted(report.by_type.items()):
            self.stdout.write(f"  {resource_type}: {count}")
