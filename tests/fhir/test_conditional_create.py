"""Conditional create under concurrency: one rule for equivalent criteria, so that any
spelling of one condition makes one resource; and a lock that is the tenant's own."""

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from django.db import connection, transaction

from fhirplatform.fhir import selectors, services
from fhirplatform.fhir.search.parsing import criteria_canonical
from fhirplatform.schemas import tenant_schema
from tenants.tokens import token_check
from tests.fhir.rest_support import FHIR_JSON, live_cast, patient, stored_tagged, tagged

pytestmark = [pytest.mark.live, pytest.mark.django_db]

MRN = "urn:mrn"
ROUNDS = 4


def spellings(value: str) -> list[str]:
    """One condition (this MRN, born on this day), written as clients write it."""
    return [
        f"identifier={MRN}|{value}&birthdate=1974-12-25",
        f"identifier=urn%3Amrn%7C{value}&birthdate=1974-12-25",
        f"birthdate=1974-12-25&identifier=urn%3amrn%7c{value}",
        f"?identifier={MRN}|{value}&birthdate=1974-12-25&",
        f"_count=5&identifier={MRN}|{value}&birthdate=1974-12-25&_sort=_id",
        f"identifier={MRN}|{value}&&birthdate=1974-12-25&_summary=data&name=",
    ]


def test_equivalent_criteria_have_one_canonical_form():
    forms = {criteria_canonical(resource_type="Patient", query=q) for q in spellings("X")}
    assert len(forms) == 1
    # String values are folded as string search folds them; OR-values are sorted.
    assert criteria_canonical(resource_type="Patient", query="name=Müller,Adams") == (
        criteria_canonical(resource_type="Patient", query="name=adams,MULLER")
    )
    assert criteria_canonical(resource_type="Patient", query="name:exact=Müller") != (
        criteria_canonical(resource_type="Patient", query="name:exact=muller")
    )


@pytest.fixture(scope="module")
def live(cast, live_server_url, django_db_blocker):
    yield from live_cast(cast, live_server_url, django_db_blocker)


def _poster(live: Any, tenant_slug: str, token: str) -> Callable[..., requests.Response]:
    url = f"{live.url}/fhir/{tenant_slug}/Patient"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": FHIR_JSON}

    def post(criteria: str, body: dict[str, Any], timeout: float = 30) -> requests.Response:
        return requests.post(
            url, json=body, headers=headers | {"If-None-Exist": criteria}, timeout=timeout
        )

    return post


def test_concurrent_spellings_of_one_condition_make_one_resource(cast, live):
    post = _poster(live, cast.tenant_a.slug, live.token_a)
    for _ in range(ROUNDS):
        run = uuid.uuid4().hex
        body = tagged(patient(run) | {"identifier": [{"system": MRN, "value": run}]}, run)
        queries = spellings(run)
        start = threading.Barrier(len(queries))

        def create(
            criteria: str, body: dict[str, Any] = body, start: threading.Barrier = start
        ) -> int:
            start.wait(timeout=30)
            return post(criteria, body).status_code

        with ThreadPoolExecutor(len(queries)) as pool:
            statuses = sorted(pool.map(create, queries))
        assert statuses == [200] * (len(queries) - 1) + [201]
        assert len(stored_tagged(cast.tenant_a, run)) == 1


def test_a_tenants_conditional_create_lock_never_holds_up_another_tenant(
    cast, live, django_db_blocker
):
    run = uuid.uuid4().hex
    criteria = f"identifier={MRN}|{run}"
    held, release = threading.Event(), threading.Event()

    def hold_lock_in_tenant_a() -> None:
        # Tenant A's conditional create, its transaction kept open (and then undone).
        try:
            with django_db_blocker.unblock():
                caller = token_check(
                    authorization=f"Bearer {live.token_a}", url_tenant_slug=cast.tenant_a.slug
                ).caller
                with tenant_schema(cast.tenant_a), transaction.atomic():
                    services.resource_match_locked(
                        resource_type="Patient",
                        query=criteria,
                        matches=lambda t, c: selectors.resource_match(
                            caller=caller, resource_type=t, criteria=c
                        ),
                    )
                    held.set()
                    release.wait(timeout=60)
                    transaction.set_rollback(True)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_lock_in_tenant_a)
    holder.start()
    try:
        assert held.wait(timeout=30)
        # The lock is real: tenant A's own conditional create with the same criteria waits.
        post_a = _poster(live, cast.tenant_a.slug, live.token_a)
        with pytest.raises(requests.Timeout):
            post_a(f"identifier=urn%3Amrn%7C{run}", tagged(patient(run), run), timeout=1.5)
        # Tenant B's, with the very same criteria, does not.
        post_b = _poster(live, cast.tenant_b.slug, live.token_b)
        started = time.monotonic()
        created_b = post_b(criteria, tagged(patient(run), run), timeout=10)
        elapsed = time.monotonic() - started
        assert created_b.status_code == 201
        assert elapsed < 3
    finally:
        release.set()
        holder.join(timeout=30)
    # Tenant A's waiting create went ahead once the lock was free.
    deadline = time.monotonic() + 15
    while not stored_tagged(cast.tenant_a, run) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(stored_tagged(cast.tenant_a, run)) == 1
