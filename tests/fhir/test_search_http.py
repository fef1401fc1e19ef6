"""Search over real HTTP: resources created through the API are found through GET and
POST _search, page links are followed as absolute URLs, and another tenant's token gets
nothing (not the results, not the page links)."""

import uuid
from typing import Any

import pytest
import redis
import requests
from django.conf import settings
from fhir.resources.R4B import get_fhir_model_class
from fhirpy import SyncFHIRClient

from fhirplatform.schemas import schema_public
from tenants.scopes import scopes_parse
from tenants.services import client_create, tenant_create, token_issue

# django_db makes pytest-django set up the test database; the data itself is committed by
# the live server, and tokens are issued (committed) in the module fixture.
pytestmark = [pytest.mark.live, pytest.mark.django_db]
FHIR_JSON = "application/fhir+json"


def session(token: str) -> requests.Session:
    http = requests.Session()
    http.headers.update({"Authorization": f"Bearer {token}", "Accept": FHIR_JSON})
    return http


def valid(body: dict[str, Any]) -> dict[str, Any]:
    get_fhir_model_class(body["resourceType"]).model_validate(body)
    return body


def match_ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def next_url(bundle: dict[str, Any]) -> str | None:
    return next((li["url"] for li in bundle["link"] if li["relation"] == "next"), None)


@pytest.fixture(scope="module")
def seeded(live_server_url: str, cast: Any, django_db_blocker: Any) -> dict[str, Any]:
    """A fresh tenant (committed, so the live server sees it) holding a patient with 25
    observations created through the API; tenant B's client plays the other tenant."""
    slug = "s" + uuid.uuid4().hex[:10]
    base = f"{live_server_url}/fhir/{slug}"
    # Rate-limit buckets of earlier runs live in the test Redis database: start from full.
    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    family = "Zz" + uuid.uuid4().hex[:10]
    with django_db_blocker.unblock():
        schema_public()
        tenant_create(slug=slug, name="Search over HTTP")
        issued = client_create(
            partner_name=f"Search {slug}", tenant_slugs=[slug], scopes="system/*.cruds"
        )
        grant = issued.grants[0]
        token_a = token_issue(
            grant=grant, scopes=scopes_parse(grant.scopes), auth_method="test"
        ).access_token
        token_b = cast.client_b.token()
        schema_public()
    http = session(token_a)
    # One transaction Bundle: the patient and its observations, linked by urn:uuid.
    patient_ref = f"urn:uuid:{uuid.uuid4()}"
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": patient_ref,
            "resource": {
                "resourceType": "Patient",
                "name": [{"family": family, "given": ["Åsa"]}],
                "gender": "female",
                "birthDate": "1990-05-17",
            },
            "request": {"method": "POST", "url": "Patient"},
        }
    ]
    for n in range(25):
        entries.append(
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                    "subject": {"reference": patient_ref},
                    "effectiveDateTime": f"2022-03-{n + 1:02d}T10:00:00Z",
                    "valueQuantity": {
                        "value": 60 + n,
                        "unit": "/min",
                        "system": "http://unitsofmeasure.org",
                        "code": "/min",
                    },
                },
                "request": {"method": "POST", "url": "Observation"},
            }
        )
    response = http.post(
        base + "/",
        json={"resourceType": "Bundle", "type": "transaction", "entry": entries},
        headers={"Content-Type": FHIR_JSON},
    )
    assert response.status_code == 200, response.text
    # Locations are absolute: <base>/<Type>/<id>/_history/<version>.
    created = [
        e["response"]["location"].split("/_history/")[0].rsplit("/", 1)[1]
        for e in response.json()["entry"]
    ]
    patient_id, observations = created[0], created[1:]
    return {
        "slug": slug,
        "base": base,
        "http": http,
        "family": family,
        "patient": patient_id,
        "observations": observations,
        "token_a": token_a,
        "token_b": token_b,
    }


def test_get_search_finds_and_pages_with_absolute_links(seeded: dict[str, Any]) -> None:
    http, base = seeded["http"], seeded["base"]
    response = http.get(
        f"{base}/Observation",
        params={
            "patient": seeded["patient"],
            "code": "http://loinc.org|8867-4",
            "date": "ge2022-03-05",
            "_count": "7",
            "_sort": "-date",
        },
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith(FHIR_JSON)
    bundle = valid(response.json())
    seen = match_ids(bundle)
    while (url := next_url(bundle)) is not None:
        assert url.startswith(base + "/Observation?")
        bundle = valid(http.get(url).json())
        seen += match_ids(bundle)
    expected = seeded["observations"][4:]
    assert len(seen) == len(expected) and set(seen) == set(expected)
    assert seen == list(reversed(expected))  # -date


def test_post_search_with_form_body_and_include(seeded: dict[str, Any]) -> None:
    http, base = seeded["http"], seeded["base"]
    response = http.post(
        f"{base}/Observation/_search",
        data={
            "subject": f"Patient/{seeded['patient']}",
            "value-quantity": "ge80",
            "_include": "Observation:subject",
        },
    )
    assert response.status_code == 200, response.text
    bundle = valid(response.json())
    assert set(match_ids(bundle)) == set(seeded["observations"][20:])
    assert match_ids(bundle, "include") == [seeded["patient"]]


def test_string_search_and_count_summary(seeded: dict[str, Any]) -> None:
    http, base = seeded["http"], seeded["base"]
    bundle = http.get(
        f"{base}/Patient", params={"family": seeded["family"].lower(), "given": "asa"}
    ).json()
    assert match_ids(bundle) == [seeded["patient"]]
    counted = http.get(
        f"{base}/Observation", params={"patient": seeded["patient"], "_summary": "count"}
    )
    assert valid(counted.json())["total"] == 25


def test_strict_handling_rejects_unknown_and_lenient_ignores(seeded: dict[str, Any]) -> None:
    http, base = seeded["http"], seeded["base"]
    params = {"family": seeded["family"], "favourite-colour": "green"}
    strict = http.get(f"{base}/Patient", params=params, headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400
    outcome = valid(strict.json())
    assert outcome["issue"][0]["expression"] == ["favourite-colour"]
    lenient = http.get(f"{base}/Patient", params=params)
    assert lenient.status_code == 200
    self_link = lenient.json()["link"][0]["url"]
    assert "favourite-colour" not in self_link and "family=" in self_link


def test_bad_value_is_an_operation_outcome(seeded: dict[str, Any]) -> None:
    response = seeded["http"].get(f"{seeded['base']}/Observation", params={"date": "ge2022-13-40"})
    assert response.status_code == 400
    outcome = valid(response.json())
    assert outcome["issue"][0]["expression"] == ["date"]


def test_fhirpy_client_searches(seeded: dict[str, Any]) -> None:
    client = SyncFHIRClient(seeded["base"], authorization=f"Bearer {seeded['token_a']}")
    found = client.resources("Observation").search(patient=seeded["patient"]).limit(10).fetch_all()
    assert {o.id for o in found} == set(seeded["observations"])


def test_other_tenant_sees_none_of_it(
    seeded: dict[str, Any], cast: Any, live_server_url: str
) -> None:
    http_b = session(seeded["token_b"])
    base_b = f"{live_server_url}/fhir/{cast.tenant_b.slug}"
    bundle = http_b.get(
        f"{base_b}/Observation",
        params={"patient": seeded["patient"], "_include": "Observation:subject"},
    ).json()
    assert match_ids(bundle) == [] and match_ids(bundle, "include") == []
    revinclude = http_b.get(
        f"{base_b}/Patient", params={"_id": seeded["patient"], "_revinclude": "Observation:subject"}
    ).json()
    assert revinclude.get("entry") is None
    # Tenant A's page link, replayed with tenant B's token: the shared 404.
    page = (
        seeded["http"]
        .get(f"{seeded['base']}/Observation", params={"patient": seeded["patient"], "_count": "5"})
        .json()
    )
    url = next_url(page)
    assert url is not None
    assert http_b.get(url).status_code == 404
    # On B's own base, the link is not valid for B: the paging-link 400, disclosing nothing.
    rerouted = http_b.get(url.replace(f"/fhir/{seeded['slug']}/", f"/fhir/{cast.tenant_b.slug}/"))
    assert rerouted.status_code == 400
    issue = valid(rerouted.json())["issue"][0]
    assert issue["code"] == "invalid" and issue["expression"] == ["_cursor"]
