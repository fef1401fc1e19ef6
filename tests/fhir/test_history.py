"""History at instance, type and system level: _since, _count, keyset paging, isolation."""

import time
from urllib.parse import parse_qsl, urlsplit

import pytest
from django.utils import timezone

from tests.fhir.rest_support import FhirClient, fhir_valid, generous_limits, observation, patient

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(cast):
    generous_limits(cast.tenant_a, cast.tenant_b, cast.client_a.grant, cast.client_b.grant)
    return FhirClient(cast.tenant_a.slug, cast.client_a.token())


def _follow(api, url):
    """GET an absolute link of this server through the test client."""
    parts = urlsplit(url)
    path = parts.path.removeprefix(api.base + "/") + (f"?{parts.query}" if parts.query else "")
    return api.client.get(f"{api.base}/{path}", **api._headers(None))


def test_instance_history_lists_every_version_newest_first(api):
    created = api.post("Patient", patient()).json()
    path = f"Patient/{created['id']}"
    api.put(path, created | {"gender": "female"})
    api.delete(path)
    response = api.get(f"{path}/_history")
    assert response.status_code == 200
    bundle = fhir_valid(response.json())
    assert bundle["type"] == "history"
    methods = [entry["request"]["method"] for entry in bundle["entry"]]
    assert methods == ["DELETE", "PUT", "POST"]
    assert [e["response"]["etag"] for e in bundle["entry"]] == ['W/"3"', 'W/"2"', 'W/"1"']
    assert "resource" not in bundle["entry"][0]
    assert bundle["entry"][2]["resource"]["gender"] == "male"
    assert bundle["entry"][1]["fullUrl"].startswith("http")
    assert bundle["link"][0]["relation"] == "self"
    assert api.get("Patient/never-existed/_history").status_code == 404


def test_type_and_system_history_with_since(api):
    first = api.post("Patient", patient("Early")).json()
    time.sleep(0.01)
    since = timezone.now().isoformat()
    second = api.post("Patient", patient("Late")).json()
    obs = api.post("Observation", observation(f"Patient/{second['id']}")).json()
    typed = fhir_valid(api.get("Patient/_history", _since=since).json())
    ids = [entry["resource"]["id"] for entry in typed["entry"]]
    assert second["id"] in ids and first["id"] not in ids and obs["id"] not in ids
    system = fhir_valid(api.get("_history", _since=since).json())
    system_ids = {entry["resource"]["id"] for entry in system["entry"]}
    assert {second["id"], obs["id"]} <= system_ids and first["id"] not in system_ids
    assert api.get("_history", _since="last tuesday").status_code == 400
    assert api.get("_history", _count="-1").status_code == 400


def test_paging_returns_each_version_exactly_once(api):
    since = timezone.now().isoformat()
    created = {api.post("Patient", patient(f"P{i}")).json()["id"] for i in range(23)}
    seen: list[str] = []
    response = api.get("Patient/_history", _since=since, _count="5")
    pages = 0
    while True:
        bundle = fhir_valid(response.json())
        pages += 1
        assert len(bundle["entry"]) <= 5
        seen += [entry["resource"]["id"] for entry in bundle["entry"]]
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not nxt:
            break
        assert nxt[0].startswith("http") and "_cursor=" in nxt[0]
        response = _follow(api, nxt[0])
        assert response.status_code == 200
    assert pages == 5
    assert sorted(seen) == sorted(created)


def _link(bundle, relation):
    found = [link["url"] for link in bundle["link"] if link["relation"] == relation]
    return found[0] if found else None


def test_pages_carry_the_total_and_lead_back_by_previous_links(api):
    since = timezone.now().isoformat()
    for i in range(12):
        api.post("Patient", patient(f"Q{i}"))
    pages = [api.get("Patient/_history", _since=since, _count="5").json()]
    while url := _link(pages[-1], "next"):
        pages.append(_follow(api, url).json())
    assert [len(page["entry"]) for page in pages] == [5, 5, 2]
    assert {page["total"] for page in pages} == {12}
    assert _link(pages[0], "previous") is None

    # Back from the last page, by previous links: the same pages, in the same order.
    back = [pages[-1]]
    while url := _link(back[-1], "previous"):
        back.append(_follow(api, url).json())
    assert [fhir_valid(page)["total"] for page in back] == [12, 12, 12]
    ids = [[entry["resource"]["id"] for entry in page["entry"]] for page in back]
    assert ids == [[entry["resource"]["id"] for entry in page["entry"]] for page in pages[::-1]]
    assert _link(back[-1], "next") == _link(pages[0], "next")  # the first page again


def test_count_above_the_cap_is_refused_like_a_search(api):
    refused = api.get("_history", _count="100000")
    assert refused.status_code == 400
    issue = refused.json()["issue"][0]
    assert issue["code"] == "too-costly" and issue["expression"] == ["_count"]
    assert api.get("Patient", _count="100000").json() == refused.json()


def test_cursor_replays_only_for_its_client(api, cast):
    for i in range(3):
        api.post("Patient", patient(f"C{i}"))
    bundle = api.get("Patient/_history", _count="1").json()
    next_url = next(link["url"] for link in bundle["link"] if link["relation"] == "next")
    assert _follow(api, next_url).status_code == 200
    # The same tenant, another client: the signed cursor is refused.
    from tenants.services import client_create

    other = client_create(
        partner_name="Second Partner A", tenant_slugs=[cast.tenant_a.slug], scopes="system/*.rs"
    ).grants[0]
    from tenants.scopes import scopes_parse
    from tenants.services import token_issue

    token = token_issue(grant=other, scopes=scopes_parse("system/*.rs"), auth_method="test")
    second = FhirClient(cast.tenant_a.slug, token.access_token)
    refused = _follow(second, next_url)
    _refused_as_not_valid_here(refused)


def _refused_as_not_valid_here(response):
    """The one answer to any cursor not valid for this caller and query (fhir/paging.py)."""
    assert response.status_code == 400
    issue = fhir_valid(response.json())["issue"][0]
    assert issue["code"] == "invalid" and issue["expression"] == ["_cursor"]
    assert "not valid for this client or query" in issue["diagnostics"]
    return issue


def test_one_answer_for_every_cursor_not_made_for_this_query(api):
    since = timezone.now().isoformat()
    for i in range(3):
        api.post("Patient", patient(f"Q{i}"))
    history = api.get("Patient/_history", _since=since, _count="1").json()
    history_next = next(link["url"] for link in history["link"] if link["relation"] == "next")
    cursor = dict(parse_qsl(urlsplit(history_next).query))["_cursor"]
    search = api.get("Patient", _count="1").json()
    search_next = next(link["url"] for link in search["link"] if link["relation"] == "next")
    search_cursor = dict(parse_qsl(urlsplit(search_next).query))["_cursor"]
    answers = [
        # tampered
        api.get("Patient/_history", _since=since, _count="1", _cursor=cursor[:-3] + "abc"),
        # another history (type history's cursor on system history, another _since)
        api.get("_history", _since=since, _count="1", _cursor=cursor),
        api.get("Patient/_history", _count="1", _cursor=cursor),
        # a search's cursor on history, and a history cursor on a search
        api.get("Patient/_history", _since=since, _count="1", _cursor=search_cursor),
        api.get("Patient", _count="1", _cursor=cursor),
    ]
    issues = [_refused_as_not_valid_here(answer) for answer in answers]
    assert all(issue == issues[0] for issue in issues)
    # The page size is not part of the query: the same link pages with another _count.
    assert api.get("Patient/_history", _since=since, _count="2", _cursor=cursor).status_code == 200


def test_the_other_tenant_cannot(api, cast):
    created = api.post("Patient", patient("Secret")).json()
    api.post("Patient", patient("Secret2"))
    bundle = api.get("Patient/_history", _count="1").json()
    next_url = next(link["url"] for link in bundle["link"] if link["relation"] == "next")
    token_b = cast.client_b.token()
    own_b = FhirClient(cast.tenant_b.slug, token_b)
    for path in ("_history", "Patient/_history"):
        entries = own_b.get(path).json().get("entry", [])
        assert created["id"] not in [e.get("resource", {}).get("id") for e in entries]
    assert own_b.get(f"Patient/{created['id']}/_history").status_code == 404
    stranger = FhirClient(cast.tenant_a.slug, token_b)
    assert stranger.get("_history").status_code == 404
    assert _follow(stranger, next_url).status_code == 404
    # A's cursor replayed on B's base: B's schema, and refused as not B's cursor.
    replay = own_b.client.get(
        f"{own_b.base}/Patient/_history?{urlsplit(next_url).query}", **own_b._headers(None)
    )
    _refused_as_not_valid_here(replay)


def test_history_needs_search_scope(cast):
    reader = FhirClient(cast.tenant_a.slug, cast.client_a.token("system/Patient.r"))
    assert reader.get("Patient/_history").status_code == 403
    assert reader.get("_history").status_code == 403
