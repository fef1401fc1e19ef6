import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from consent.governance import PolicyRun, policy_tests_run
from tenants.models import Tenant


class Command(BaseCommand):
    help = (
        "Run a tenant's consent policy tests against the live decision engine; list the "
        "policy rules no test covers. Exit status 1 when a test fails."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", required=True, help="The tenant's slug.")
        parser.add_argument("--json", action="store_true", help="Print the run as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = Tenant.objects.filter(slug=options["tenant"]).first()
        if tenant is None:
            raise CommandError(f"no tenant with the slug '{options['tenant']}'")
        run = policy_tests_run(tenant=tenant)
        if options["json"]:
            self.stdout.write(json.dumps(run.as_json(), indent=2))
        else:
            self._report(run)
        if not run.passed:
            # CI reads the exit status: the report above says which tests failed.
            raise CommandError(
                f"{run.failures} of {len(run.results)} policy tests failed", returncode=1
            )

    def _report(self, run: PolicyRun) -> None:
        self.stdout.write(
            f"Tenant {run.tenant}, consent policy version {run.policy.version}: "
            f"{len(run.results)} policy tests"
        )
        for result in run.results:
            status = "PASS" if result.passed else "FAIL"
            got = (
                f"got {result.decision.effect} ({result.decision.rule})"
                if result.decision
                else ("not decided")
            )
            self.stdout.write(
                f"{status} {result.test.name}: expected {result.test.expected}, {got}: "
                f"{result.reason}"
            )
        if run.uncovered:
            self.stdout.write(f"Rules no test covers: {', '.join(run.uncovered)}")
        else:
            self.stdout.write("Every rule of the policy is covered by a test.")
