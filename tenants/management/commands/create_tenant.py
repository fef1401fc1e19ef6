import json
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenants.models import DataRegion
from tenants.selectors import tenant_fhir_base
from tenants.services import DEFAULT_TENANT_PLAN, ProvisioningError, tenant_create


class Command(BaseCommand):
    help = "Create a tenant with its own migrated PostgreSQL schema."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--name", required=True)
        parser.add_argument("--plan", default=DEFAULT_TENANT_PLAN)
        parser.add_argument("--region", default=DataRegion.US_EAST, choices=DataRegion.values)
        parser.add_argument("--json", action="store_true", help="Print the result as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        started = time.perf_counter()
        try:
            tenant = tenant_create(
                slug=options["slug"],
                name=options["name"],
                plan_name=options["plan"],
                data_region=options["region"],
            )
        except ProvisioningError as exc:
            raise CommandError(str(exc)) from None
        result = {
            "tenant": tenant.slug,
            "name": tenant.name,
            "schema": tenant.schema_name,
            "plan": tenant.plan.name,
            "fhir_base_url": tenant_fhir_base(tenant),
            "seconds": round(time.perf_counter() - started, 3),
        }
        if options["json"]:
            self.stdout.write(json.dumps(result, indent=2))
        else:
            self.stdout.write(
                f"Created tenant {tenant.slug} (schema {tenant.schema_name}, "
                f"plan {tenant.plan.name}) in {result['seconds']}s\n"
                f"FHIR base: {result['fhir_base_url']}"
            )
