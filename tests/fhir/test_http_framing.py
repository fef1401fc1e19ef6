"""Request framing on the live server: a write must announce its size before it is read."""

import http.client
import json
import urllib.parse
import uuid

import pytest
import requests

from tests.fhir.rest_support import fhir_valid, live_cast, patient

pytestmark = [pytest.mark.live, pytest.mark.django_db]


@pytest.fixture(scope="module")
def live(cast, live_server_url, django_db_blocker):
    yield from live_cast(cast, live_server_url, django_db_blocker)


def _post_chunked(base: str, path: str, token: str, body: bytes) -> tuple[int, dict]:
    connection = http.client.HTTPConnection(urllib.parse.urlparse(base).netloc, timeout=10)
    try:
        connection.putrequest("POST", path)
        connection.putheader("Authorization", f"Bearer {token}")
        connection.putheader("Content-Type", "application/fhir+json")
        connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        connection.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def _count(live, slug: str, family: str) -> int:
    response = requests.get(
        f"{live.url}/fhir/{slug}/Patient",
        params={"family:exact": family, "_summary": "count"},
        headers={"Authorization": f"Bearer {live.token_a}"},
        timeout=10,
    )
    assert response.status_code == 200
    return int(response.json()["total"])


def test_chunked_writes_are_refused_with_411_and_store_nothing(cast, live):
    slug = cast.tenant_a.slug
    family = f"Chunked{uuid.uuid4().hex[:8]}"
    resource = patient(family)
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": resource, "request": {"method": "POST", "url": "Patient"}}],
    }
    for path, body in (
        (f"/fhir/{slug}/Patient", resource),
        (f"/fhir/{slug}", transaction),
    ):
        status, outcome = _post_chunked(live.url, path, live.token_a, json.dumps(body).encode())
        assert status == 411, path
        issue = fhir_valid(outcome)["issue"][0]
        assert issue["code"] == "structure" and "Content-Length" in issue["diagnostics"]
    assert _count(live, slug, family) == 0

    sized = requests.post(
        f"{live.url}/fhir/{slug}/Patient",
        json=resource,
        headers={
            "Authorization": f"Bearer {live.token_a}",
            "Content-Type": "application/fhir+json",
        },
        timeout=10,
    )
    assert sized.status_code == 201  # the same body with a Content-Length is accepted
    assert _count(live, slug, family) == 1
