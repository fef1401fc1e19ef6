"""The trail an audit command works on: `--tenant SLUG` or `--public`."""

from datetime import UTC, datetime
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.utils.dateparse import parse_date, parse_datetime

from tenants.models import Tenant


def trail_arguments(parser: CommandParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--tenant", help="the tenant's slug")
    where.add_argument("--public", action="store_true", help="the public trail")


def trail_tenant(options: dict[str, Any]) -> Tenant | None:
    """The tenant `--tenant` names (None for `--public`); an unknown slug is an error."""
    if options["public"]:
        return None
    tenant = Tenant.objects.filter(slug=options["tenant"]).first()
    if tenant is None:
        raise CommandError(f"no tenant {options['tenant']!r}")
    return tenant


def instant_option(text: str, name: str) -> datetime:
    """An ISO date or date-time; a date is its midnight UTC, a naive time is UTC."""
    parsed = parse_datetime(text)
    if parsed is None and (day := parse_date(text)) is not None:
        parsed = datetime(day.year, day.month, day.day)
    if parsed is None:
        raise CommandError(f"--{name} {text!r} is not an ISO date or date-time")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
