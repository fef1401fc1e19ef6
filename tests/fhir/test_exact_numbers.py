"""Decimals keep the digits they were written with (fhirplatform/fhir/numbers.py): through
validation, storage, the create and read answers, versions and history, searches (shaped
or not), a patch that does not touch them, Bundles, the loader and idempotent replays."""

import gzip
import uuid
from decimal import Decimal

import pytest

from fhirplatform.fhir.loading import fhir_load_path
from fhirplatform.fhir.numbers import ExactFloat, exact_dumps, exact_loads
from tests.fhir.rest_support import FhirClient, generous_limits

pytestmark = pytest.mark.django_db

# As a client writes them, and as every later answer must spell them.
WRITTEN = {"1.50": "1.50", "0.40": "0.40", "66.899999999999991": "66.899999999999991",
           "-0.0010": "-0.0010", "1.50e1": "15.0", "2E-3": "0.002", "12": "12"}  # fmt: skip


def _observation(marker: str) -> str:
    """An Observation whose numbers are WRITTEN's keys, as raw JSON text."""
    components = ",".join(
        f'{{"code":{{"text":"c{n}"}},"valueQuantity":{{"value":{value},"unit":"mg"}}}}'
        for n, value in enumerate(WRITTEN)
    )
    head = f'{{"resourceType":"Observation","status":"final","code":{{"text":"{marker}"}},'
    return head + f'"valueQuantity":{{"value":1.50,"unit":"mg"}},"component":[{components}]}}'


def _values(text: str) -> list[str]:
    """The numbers of an answer's first Observation, spelled as the answer spells them."""
    resource = exact_loads(text)
    if resource.get("resourceType") == "Bundle":
        resource = resource["entry"][0]["resource"]
    values = [resource["valueQuantity"]["value"]]
    values += [c["valueQuantity"]["value"] for c in resource.get("component", [])]
    return [v.text if isinstance(v, ExactFloat) else str(v) for v in values]


EXPECTED = ["1.50", *WRITTEN.values()]


@pytest.fixture
def api(cast):
    generous_limits(cast.tenant_a, cast.client_a.grant)
    return FhirClient(cast.tenant_a.slug, cast.client_a.token())


def test_every_answer_spells_the_numbers_as_written(api):
    marker = uuid.uuid4().hex
    created = api.post("Observation", _observation(marker))
    assert created.status_code == 201, created.content
    assert _values(created.content) == EXPECTED
    obs_id = created.json()["id"]

    for path, params in [
        (f"Observation/{obs_id}", {}),
        (f"Observation/{obs_id}/_history/1", {}),
        (f"Observation/{obs_id}/_history", {}),
        ("Observation", {"code:text": marker}),
        ("Observation", {"code:text": marker, "_elements": "valueQuantity,component"}),
        ("Observation", {"code:text": marker, "_summary": "data"}),
    ]:
        answer = api.get(path, **params)
        assert answer.status_code == 200, (path, answer.content)
        assert _values(answer.content) == EXPECTED, (path, params)

    # A patch of another element leaves every number as it was written.
    patched = api.send(
        "PATCH",
        f"Observation/{obs_id}",
        '[{"op":"replace","path":"/status","value":"amended"}]',
        content_type="application/json-patch+json",
    )
    assert patched.status_code == 200, patched.content
    assert _values(api.get(f"Observation/{obs_id}").content) == EXPECTED


def test_bundles_and_replays_keep_the_numbers(api):
    entry = f'{{"resource":{_observation(uuid.uuid4().hex)},"request":{{"method":"POST",'
    entry += '"url":"Observation"}}'
    done = api.post("", f'{{"resourceType":"Bundle","type":"transaction","entry":[{entry}]}}')
    assert done.status_code == 200, done.content
    location = done.json()["entry"][0]["response"]["location"]  # [base]/Observation/x/_history/1
    assert _values(api.get(location.split(f"{api.base}/")[1]).content) == EXPECTED

    # An Idempotency-Key sent again with 1.5 for 1.50 is another request, not a replay.
    key = {"Idempotency-Key": str(uuid.uuid4())}
    body = _observation(uuid.uuid4().hex)
    assert api.post("Observation", body, headers=key).status_code == 201
    assert api.post("Observation", body, headers=key).status_code == 201  # the replay
    changed = body.replace('"value":1.50,"unit":"mg"}', '"value":1.5,"unit":"mg"}', 1)
    assert api.post("Observation", changed, headers=key).status_code == 422


def test_the_loader_keeps_the_numbers(api, cast, tmp_path):
    marker = uuid.uuid4().hex
    resource = _observation(marker).replace(
        '{"resourceType"', f'{{"id":"{marker}","resourceType"', 1
    )
    path = tmp_path / "observations.ndjson.gz"
    with gzip.open(path, "wt") as out:
        out.write(resource + "\n")
    report = fhir_load_path(tenant=cast.tenant_a, path=path)
    assert report.resources == 1, report.failures
    assert _values(api.get(f"Observation/{marker}").content) == EXPECTED


def test_exact_floats_compute_as_floats_and_write_their_digits():
    value = exact_loads('{"v": 1.50, "big": 123456789012345678901234567890}')
    number = value["v"]
    assert isinstance(number, ExactFloat) and number == 1.5 and number + 1 == 2.5
    assert exact_dumps(value) == b'{"v":1.50,"big":123456789012345678901234567890}'
    assert Decimal(number.text) == Decimal("1.50")
