"""Consent against a real server: the revocation race, and Redis out of reach.

The race: readers on their own connections read and search a patient's Observation in a
tight loop, through a real gunicorn (2 workers, 4 threads), while a deny Consent is
written through the API. Every answer to a request sent after the write returned must be
a denial: the write's on-commit generation bump is done before its response leaves.
"""

import threading
import time
from typing import Any

import pytest
import requests

from fhirplatform.limits.engine import limits_reset_local_state
from tests.consent.enforcement_support import (
    client_actor,
    consent,
    observation,
)

pytestmark = pytest.mark.live


def _bearer(client: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {client.token}", "Accept": "application/fhir+json"}


def test_no_permitted_answer_after_the_deny_consent_returns(world, live_server_url, committed):
    world.policy()
    patient = world.created({"resourceType": "Patient", "name": [{"family": "Racing"}]})
    obs = world.created(observation(patient["id"]))
    reader = world.client(world.reader)
    base = f"{live_server_url}/fhir/{world.tenant.slug}"
    urls = [f"{base}/Observation/{obs['id']}", f"{base}/Observation?subject={patient['id']}"]
    stop = threading.Event()
    answers: list[tuple[float, str, bool]] = []  # (sent at, url, permitted)

    def read_loop(url: str) -> None:
        with requests.Session() as session:
            while not stop.is_set():
                sent = time.monotonic()
                response = session.get(url, headers=_bearer(reader), timeout=10)
                if "?" in url:
                    permitted = response.status_code == 200 and response.json().get("total") != 0
                else:
                    permitted = response.status_code == 200
                answers.append((sent, url, permitted))

    threads = [threading.Thread(target=read_loop, args=(url,)) for url in urls for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # the readers are in full flow, their answers cached
    deny = consent(
        patient["id"],
        {"type": "deny", "actor": client_actor(world.reader.client.client_id)},
    )
    writer = requests.post(
        f"{base}/Consent",
        json=deny,
        headers=_bearer(world.writer) | {"Content-Type": "application/fhir+json"},
        timeout=10,
    )
    returned = time.monotonic()
    time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join()

    assert writer.status_code == 201, writer.text
    before = [a for a in answers if a[0] < returned]
    after = [a for a in answers if a[0] > returned]
    assert any(permitted for _, _, permitted in before)  # the race was run
    assert len(after) > 20
    assert [a for a in after if a[2]] == []


def test_redis_out_of_reach_still_decides_and_says_bypass(world, committed, settings):
    world.policy()
    patient = world.created({"resourceType": "Patient", "name": [{"family": "Offline"}]})
    obs = world.created(observation(patient["id"]))
    world.created(
        consent(
            patient["id"], {"type": "deny", "actor": client_actor(world.reader.client.client_id)}
        )
    )
    from fhirplatform.cache.store import store_reset_local_state

    closed = "redis://127.0.0.1:9/0"  # the discard port: nothing listens
    settings.CACHE_REDIS_URL = settings.LIMITS_REDIS_URL = closed
    store_reset_local_state()
    limits_reset_local_state()
    try:
        denied = world.client(world.reader).get(f"Observation/{obs['id']}")
        permitted = world.client(world.other).get(f"Observation/{obs['id']}")
        searched = world.client(world.reader).get("Observation", subject=patient["id"])
    finally:
        store_reset_local_state()
        limits_reset_local_state()
    assert denied.status_code == 404
    assert permitted.status_code == 200 and permitted["X-Cache"] == "BYPASS"
    assert searched.status_code == 200 and "entry" not in searched.json()
