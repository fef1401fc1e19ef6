"""Concurrent updates with If-Match against the live server never lose a write."""

import threading

import pytest
import requests

from tests.fhir.rest_support import FHIR_JSON, live_cast, patient

pytestmark = [pytest.mark.live, pytest.mark.django_db]

WRITERS = 4
WRITES_EACH = 5


@pytest.fixture(scope="module")
def live(cast, live_server_url, django_db_blocker):
    yield from live_cast(cast, live_server_url, django_db_blocker)


def _session(token):
    session = requests.Session()
    session.headers.update(
        {"Authorization": f"Bearer {token}", "Accept": FHIR_JSON, "Content-Type": FHIR_JSON}
    )
    return session


def test_if_match_writers_never_lose_a_write(cast, live):
    token = live.token_a
    base = f"{live.url}/fhir/{cast.tenant_a.slug}"
    created = _session(token).post(f"{base}/Patient", json=patient("Race")).json()
    url = f"{base}/Patient/{created['id']}"
    conflicts = []
    errors = []

    def writer(number):
        session = _session(token)
        for write in range(WRITES_EACH):
            while True:
                current = session.get(url)
                body = current.json()
                marker = {"system": "urn:writer", "value": f"{number}-{write}"}
                body["identifier"] = [*body.get("identifier", []), marker]
                response = session.put(
                    url, json=body, headers={"If-Match": current.headers["ETag"]}
                )
                if response.status_code == 200:
                    break
                if response.status_code != 412:
                    errors.append((response.status_code, response.text))
                    return
                conflicts.append(number)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    final = _session(token).get(url).json()
    markers = {i["value"] for i in final["identifier"] if i["system"] == "urn:writer"}
    expected = {f"{n}-{w}" for n in range(WRITERS) for w in range(WRITES_EACH)}
    assert markers == expected  # every write survived
    assert final["meta"]["versionId"] == str(1 + WRITERS * WRITES_EACH)
    history = _session(token).get(f"{url}/_history", params={"_count": "100"}).json()
    assert len(history["entry"]) == 1 + WRITERS * WRITES_EACH


def test_unconditional_concurrent_updates_each_get_a_version(cast, live):
    token = live.token_a
    base = f"{live.url}/fhir/{cast.tenant_a.slug}"
    created = _session(token).post(f"{base}/Patient", json=patient("Blind")).json()
    url = f"{base}/Patient/{created['id']}"
    statuses = []

    def writer(number):
        response = _session(token).put(url, json=created | {"birthDate": f"19{50 + number}"})
        statuses.append(response.status_code)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert statuses == [200] * 6
    versions = _session(token).get(f"{url}/_history").json()["entry"]
    assert sorted(int(e["response"]["etag"][3:-1]) for e in versions) == list(range(1, 8))


def test_the_other_tenant_cannot(cast, live):
    token_a, token_b = live.token_a, live.token_b
    base_a = f"{live.url}/fhir/{cast.tenant_a.slug}"
    created = _session(token_a).post(f"{base_a}/Patient", json=patient("Guarded")).json()
    url = f"{base_a}/Patient/{created['id']}"
    attempt = _session(token_b).put(
        url, json=created | {"gender": "female"}, headers={"If-Match": 'W/"1"'}
    )
    assert attempt.status_code == 404
    assert _session(token_b).get(url).status_code == 404
    assert _session(token_a).get(url).json()["meta"]["versionId"] == "1"
