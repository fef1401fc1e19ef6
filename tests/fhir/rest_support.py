"""Helpers shared by the FHIR REST tests: an authenticated test client and body checks."""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.test import Client
from fhir.resources.R4B import get_fhir_model_class

from fhirplatform.fhir.models import Resource
from fhirplatform.limits.selectors import profile_cache
from fhirplatform.schemas import tenant_schema

FHIR_JSON = "application/fhir+json"
# meta.tag system a test marks its own resources with, to find exactly what it stored.
TAG_SYSTEM = "urn:fhirplatform:test-run"


class FhirClient:
    """Django's test client speaking FHIR JSON to one tenant with one bearer token."""

    def __init__(self, tenant_slug: str, token: str) -> None:
        self.client = Client()
        self.base = f"/fhir/{tenant_slug}"
        self.token = token

    def _headers(self, headers: dict[str, str] | None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "HTTP_AUTHORIZATION": f"Bearer {self.token}",
            "HTTP_ACCEPT": FHIR_JSON,
        }
        for name, value in (headers or {}).items():
            out["HTTP_" + name.upper().replace("-", "_")] = value
        return out

    def get(self, path: str, headers: dict[str, str] | None = None, **params: Any) -> Any:
        return self.client.get(f"{self.base}/{path}", params, **self._headers(headers))

    def send(
        self,
        method: str,
        path: str,
        body: Any,
        headers: dict[str, str] | None = None,
        content_type: str = FHIR_JSON,
    ) -> Any:
        data = body if isinstance(body, str | bytes) else json.dumps(body)
        call = getattr(self.client, method.lower())
        return call(
            f"{self.base}/{path}", data, content_type=content_type, **self._headers(headers)
        )

    def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
        return self.send("POST", path, body, headers)

    def put(self, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
        return self.send("PUT", path, body, headers)

    def delete(self, path: str, headers: dict[str, str] | None = None) -> Any:
        return self.client.delete(f"{self.base}/{path}", **self._headers(headers))


def fhir_valid(body: dict[str, Any]) -> dict[str, Any]:
    """Assert the body is valid FHIR (R4B model of its type) and return it."""
    get_fhir_model_class(body["resourceType"]).model_validate(body)
    return body


def tagged(resource: dict[str, Any], run: str) -> dict[str, Any]:
    """The resource marked with the test's own tag (meta.tag), replacing any meta."""
    return resource | {"meta": {"tag": [{"system": TAG_SYSTEM, "code": run}]}}


def stored_tagged(tenant: Any, run: str) -> list[Any]:
    """Every resource of any type stored in `tenant` under the tag `run`."""
    tag = [{"system": TAG_SYSTEM, "code": run}]
    with tenant_schema(tenant):
        return list(Resource.objects.filter(content__meta__tag__contains=tag))


def patient(family: str = "Chalmers", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": family}],
        "name": [{"family": family, "given": ["Peter", "James"]}],
        "gender": "male",
        "birthDate": "1974-12-25",
        **extra,
    }


def observation(patient_ref: str, value: float = 72.0) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]
        },
        "subject": {"reference": patient_ref},
        "effectiveDateTime": "2024-03-01T10:00:00Z",
        "valueQuantity": {
            "value": value,
            "unit": "beats/minute",
            "system": "http://unitsofmeasure.org",
            "code": "/min",
        },
    }


GENEROUS_PLAN = "fhir-rest-tests"


def generous_limits(*tenants_and_grants: Any) -> None:
    """Put the given tenants and grants on a count-only (dry-run) plan, so functional tests
    of the FHIR API are not throttled by the per-minute write budgets of `standard`."""
    from tenants.services import rate_plan_count_only

    plan = rate_plan_count_only(
        name=GENEROUS_PLAN, description="FHIR REST tests: count, never refuse"
    )
    # Rows only: the session cast objects stay untouched, so a rolled-back test leaves
    # no dangling plan id in memory (the pipeline reads plans fresh from the token).
    for owner in tenants_and_grants:
        type(owner).objects.filter(pk=owner.pk).update(plan=plan)
    profile_cache.clear()


@dataclass(frozen=True)
class LiveCast:
    url: str
    token_a: str
    token_b: str


@contextmanager
def generous_plans_committed(cast: Any, django_db_blocker: Any) -> Iterator[None]:
    """Generous plans for the cast's tenants and grants, committed outside any test
    transaction (so live servers see them too), the original plans restored afterwards."""
    owners = [cast.tenant_a, cast.tenant_b, cast.client_a.grant, cast.client_b.grant]
    with django_db_blocker.unblock():
        saved = [
            (owner, type(owner).objects.values_list("plan_id", flat=True).get(pk=owner.pk))
            for owner in owners
        ]
        generous_limits(*owners)
    try:
        yield
    finally:
        with django_db_blocker.unblock():
            for owner, plan_id in saved:
                type(owner).objects.filter(pk=owner.pk).update(plan_id=plan_id)


def live_cast(cast: Any, live_server_url: str, django_db_blocker: Any) -> Iterator[LiveCast]:
    """For module fixtures of live-server tests: tokens, and generous plans (see above)."""
    with generous_plans_committed(cast, django_db_blocker):
        with django_db_blocker.unblock():
            live = LiveCast(live_server_url, cast.client_a.token(), cast.client_b.token())
        yield live
