"""Bad input gets a clear 4xx OperationOutcome and changes nothing: NUL characters,
deep or duplicate-keyed JSON, integers in other scripts' digits, out-of-range dates and
numbers, Bundle fields of the wrong JSON type, malformed contained resources."""

import json
from typing import Any
from urllib.parse import quote

import pytest

from fhirplatform.fhir.http import MAX_JSON_DEPTH
from fhirplatform.fhir.models import Resource, ResourceVersion
from fhirplatform.schemas import tenant_schema
from tests.fhir.rest_support import FhirClient, fhir_valid, generous_limits, patient

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(cast):
    generous_limits(cast.tenant_a, cast.tenant_b, cast.client_a.grant, cast.client_b.grant)
    return FhirClient(cast.tenant_a.slug, cast.client_a.token())


@pytest.fixture
def stored(api):
    response = api.post("Patient", patient("Stored"))
    assert response.status_code == 201
    return response.json()


def _rows(tenant) -> tuple[int, int]:
    with tenant_schema(tenant):
        return Resource.objects.count(), ResourceVersion.objects.count()


@pytest.fixture
def unchanged(cast):
    """Asserts, after the test, that no resource or version was written."""
    before = _rows(cast.tenant_a)
    yield
    assert _rows(cast.tenant_a) == before


def _refused(response, status: int, expression: str | None = None) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/fhir+json")
    outcome = fhir_valid(response.json())
    assert outcome["resourceType"] == "OperationOutcome"
    if expression is not None:
        expressions = [e for issue in outcome["issue"] for e in issue.get("expression", [])]
        assert expression in expressions, outcome
    return outcome


def _nested(levels: int) -> str:
    """A Patient whose `extension` holds `levels` nested arrays (the object is level 1)."""
    return '{"resourceType":"Patient","extension":' + "[" * levels + "]" * levels + "}"


BODIES = [
    # (id, body, status, expression)
    (
        "escaped NUL in a string",
        '{"resourceType":"Patient","name":[{"family":"Ab\\u0000c"}]}',
        422,
        "Patient.name[0].family",
    ),
    (
        "NUL in an extension string",
        json.dumps(patient(extension=[{"url": "http://x.org/e", "valueString": "a\x00"}])),
        422,
        "Patient.extension[0].valueString",
    ),
    ("escaped NUL in a key", '{"resourceType":"Patient","x\\u0000":1}', 422, "Patient.x\x00"),
    ("raw NUL byte", b'{"resourceType":"Patient","gender":"ma\x00le"}', 400, None),
    ("lone surrogate", '{"resourceType":"Patient","name":[{"family":"\\ud800"}]}', 400, None),
    ("lone surrogate in a key", '{"resourceType":"Patient","\\udc00":1}', 400, None),
    ("nested 1,000 deep", _nested(1000), 400, None),
    ("nested one level too deep", _nested(MAX_JSON_DEPTH), 400, None),
    ("duplicate resourceType", '{"resourceType":"Patient","resourceType":"Patient"}', 400, None),
    (
        "duplicate key deeper down",
        '{"resourceType":"Patient","name":[{"family":"A","family":"B"}]}',
        400,
        None,
    ),
    (  # found by the fuzzer: the message echoed the key, which cannot be encoded
        "duplicate key that is a lone surrogate",
        '{"resourceType":"Patient","\\ud800":1,"\\ud800":2}',
        400,
        None,
    ),
    ("NaN", '{"resourceType":"Patient","multipleBirthInteger":NaN}', 400, None),
    ("a number beyond a double", '{"resourceType":"Patient","x":1e999}', 400, None),
    ("an integer of 5,000 digits", '{"resourceType":"Patient","x":' + "9" * 5000 + "}", 400, None),
    ("not UTF-8", b'{"resourceType":"Patient","gender":"\xff"}', 400, None),
    (
        "contained resource without an id",
        json.dumps(patient(contained=[{"resourceType": "Organization", "name": "X"}])),
        422,
        "Patient.contained[0].id",
    ),
    (
        "contained resource with contained resources",
        json.dumps(
            patient(
                contained=[
                    {
                        "resourceType": "Organization",
                        "id": "org",
                        "contained": [{"resourceType": "Organization", "id": "inner"}],
                    }
                ],
                managingOrganization={"reference": "#org"},
            )
        ),
        422,
        "Patient.contained[0].contained",
    ),
]


# Found by the fuzzer: the R4B models crash (KeyError, TypeError) on these.
INNER_TYPES: tuple[Any, ...] = (None, "", 5, [], "Nope", "Resource", "MedicinalProduct")
for inner in INNER_TYPES:
    BODIES.append(
        (
            f"contained resourceType {inner!r}",
            json.dumps(patient(contained=[{"resourceType": inner, "id": "c"}])),
            422,
            "Patient.contained[0].resourceType",
        )
    )


@pytest.mark.parametrize(
    ("body", "status", "expression"), [c[1:] for c in BODIES], ids=[c[0] for c in BODIES]
)
def test_bad_bodies_are_refused(api, unchanged, body, status, expression):
    outcome = _refused(api.post("Patient", body), status, expression)
    if status == 400:
        assert outcome["issue"][0]["code"] == "structure"


def test_the_duplicate_key_that_stored_a_patient_as_an_observation(api, unchanged):
    body = '{"resourceType":"Observation","resourceType":"Patient","gender":"male"}'
    outcome = _refused(api.post("Observation", body), 400)
    assert "'resourceType' appears twice" in outcome["issue"][0]["diagnostics"]


def test_a_required_binding_holding_the_wrong_json_type(api, unchanged):
    # Found by the fuzzer: the binding check iterated over `coding` whatever it held.
    condition = {
        "resourceType": "Condition",
        "subject": {"reference": "Patient/x"},
        "clinicalStatus": {"coding": 5},
    }
    _refused(api.post("Condition", condition), 422, "Condition.clinicalStatus.coding")


def test_a_resource_inside_a_bundle_resource_needs_a_known_type(api, unchanged):
    document = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": patient()}, {"resource": {"resourceType": None}}],
    }
    response = api.send("PUT", "Bundle/x", document | {"id": "x"})
    _refused(response, 422, "Bundle.entry[1].resource.resourceType")


def test_the_depth_limit_leaves_room_for_real_resources(api, unchanged):
    # One level less than the limit passes the parser and meets the model's 422.
    _refused(api.post("Patient", _nested(MAX_JSON_DEPTH - 1)), 422)


def test_a_contained_resource_with_an_id_is_stored(api):
    body = patient(
        contained=[{"resourceType": "Organization", "id": "org", "name": "Clinic"}],
        managingOrganization={"reference": "#org"},
    )
    assert api.post("Patient", body).status_code == 201


def test_bad_json_patches_are_refused(api, stored, unchanged):
    path = f"Patient/{stored['id']}"
    patch = "application/json-patch+json"
    nul = '[{"op":"add","path":"/gender","value":"ma\\u0000le"}]'
    _refused(api.send("PATCH", path, nul, content_type=patch), 422, "Patient.gender")
    deep = '[{"op":"add","path":"/extension","value":' + "[" * 900 + "]" * 900 + "}]"
    _refused(api.send("PATCH", path, deep, content_type=patch), 400)
    duplicate = '[{"op":"replace","op":"add","path":"/gender","value":"male"}]'
    _refused(api.send("PATCH", path, duplicate, content_type=patch), 400)


SEARCHES = [
    # (path, params, expression)
    ("Patient", {"name": "Ab\x00"}, "name"),
    ("Patient", {"identifier": "urn:x|a\x00"}, "identifier"),
    ("Patient", {"_id": "a\x00"}, "_id"),
    ("ValueSet", {"url": "http://x.org/\x00"}, "url"),
    ("Observation", {"subject": "Patient/a\x00"}, "subject"),
    ("Observation", {"subject:Patient.name": "a\x00"}, "subject:Patient.name"),
    ("Patient", {"unknown\x00": "x"}, "unknown\x00"),
    ("Patient", {"birthdate": "ap9999"}, None),  # was an OverflowError: now within the calendar
    ("Patient", {"birthdate": "9999-12-31T23:59:59-14:00"}, "birthdate"),
    # Arabic-Indic digits: int() and regex digits take them, FHIR does not.
    ("Patient", {"birthdate": "\u0661\u0669\u0667\u0664-12-25"}, "birthdate"),
    ("Patient", {"_lastUpdated": "gt0001-01-01T00:00:00+14:00"}, "_lastUpdated"),
    ("RiskAssessment", {"probability": "1e999999"}, "probability"),
    ("RiskAssessment", {"probability": "gt1e-999999"}, "probability"),
    ("RiskAssessment", {"probability": "\u0661\u0662"}, "probability"),
    ("Observation", {"value-quantity": "5e99999|http://unitsofmeasure.org|mg"}, "value-quantity"),
    ("Patient", {"_count": "\u0661\u0662"}, "_count"),
    ("Patient", {"_count": "\u00b2"}, "_count"),
]


@pytest.mark.parametrize(("path", "params", "expression"), SEARCHES)
def test_bad_search_values_are_refused(api, path, params, expression):
    response = api.get(path, **params)
    if expression is None:
        assert response.status_code == 200, response.content
    else:
        _refused(response, 400, expression)


def test_searches_at_the_ends_of_the_calendar_still_answer(api):
    for value in ("ap0001", "ap9999-12-31", "eq0001-01-01", "lt9999-12-31T23:59:59Z"):
        assert api.get("Patient", birthdate=value).status_code == 200, value
    assert api.get("Patient", _lastUpdated="ap0001").status_code == 200


def test_nul_in_form_search_and_in_conditional_create_criteria(api, unchanged):
    response = api.client.post(
        f"{api.base}/Patient/_search",
        "name=Ab%00",
        content_type="application/x-www-form-urlencoded",
        **api._headers(None),
    )
    _refused(response, 400, "name")
    conditional = api.post("Patient", patient(), headers={"If-None-Exist": "name=Ab%00"})
    _refused(conditional, 400, "name")


@pytest.mark.parametrize(
    "since",
    [
        "10000-01-01",
        "0001-01-01T00:00:00+14:00",  # before year 1 in UTC
        "9999-12-31T23:59:59-14:00",  # after 9999 in UTC
        "2020-01-01T00:00:00+99:00",  # no such offset
        "2020-01-01T25:00:00Z",  # no such hour
        "\u0661\u0660\u0661\u0660-01-01T00:00:00Z",
        "2020-01-01T00:00:00",  # no time zone
        "2020\x00",
    ],
)
def test_out_of_range_since_is_refused(api, since):
    _refused(api.get("Patient/_history", _since=since), 400, "_since")


def test_since_in_range_is_accepted(api):
    for since in ("2020-01-01", "2020-01-01T10:00:00Z", "0001-01-01T00:00:00-05:00"):
        assert api.get("Patient/_history", _since=since).status_code == 200, since


def test_versions_and_etags_in_other_digits(api, stored):
    path = f"Patient/{stored['id']}"
    for version in ("\u00b2", "\u0661", "1" * 30):
        vread = api.get(f"{path}/_history/{quote(version)}")
        _refused(vread, 404)
    # If-None-Match naming version 1 in Arabic-Indic digits is not version 1: no 304.
    for tag in ('W/"\u00b2"', 'W/"\u0661"'):
        assert api.get(path, headers={"If-None-Match": tag}).status_code == 200
    for tag in ('W/"\u00b2"', 'W/"\u0661"'):
        update = api.put(path, stored | {"gender": "female"}, headers={"If-Match": tag})
        _refused(update, 412)
    assert api.get(path).json()["meta"]["versionId"] == "1"


def test_content_length_that_is_not_a_number(api, unchanged):
    response = api.client.post(
        f"{api.base}/Patient",
        json.dumps(patient()),
        content_type="application/fhir+json",
        CONTENT_LENGTH="12a",
        **api._headers(None),
    )
    _refused(response, 400)


def _bundle(kind: str, *entries) -> dict:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def _create(resource=None) -> dict:
    return {"resource": resource or patient(), "request": {"method": "POST", "url": "Patient"}}


BAD_ENTRIES = [
    # (id, entry, element)
    ("fullUrl {}", _create() | {"fullUrl": {}}, "fullUrl"),
    ("request []", {"resource": patient(), "request": []}, "request"),
    (
        "request.url 5",
        {"resource": patient(), "request": {"method": "POST", "url": 5}},
        "request.url",
    ),
    ("request.method {}", {"request": {"method": {}, "url": "Patient"}}, "request.method"),
    (
        "ifNoneExist []",
        {"resource": patient(), "request": {"method": "POST", "url": "Patient", "ifNoneExist": []}},
        "request.ifNoneExist",
    ),
    (
        "ifMatch {}",
        {"resource": patient(), "request": {"method": "PUT", "url": "Patient/x", "ifMatch": {}}},
        "request.ifMatch",
    ),
    (
        "ifNoneMatch 3",
        {"request": {"method": "GET", "url": "Patient/x", "ifNoneMatch": 3}},
        "request.ifNoneMatch",
    ),
    (
        "resource 'x'",
        {"resource": "x", "request": {"method": "POST", "url": "Patient"}},
        "resource",
    ),
    (
        "bad IPv6 host",
        {"resource": patient(), "request": {"method": "POST", "url": "http://[::1/Patient"}},
        "request.url",
    ),
    ("entry []", [], None),
]


@pytest.mark.parametrize("kind", ["batch", "transaction"])
@pytest.mark.parametrize(
    ("entry", "element"), [c[1:] for c in BAD_ENTRIES], ids=[c[0] for c in BAD_ENTRIES]
)
def test_bundle_fields_of_the_wrong_type(api, unchanged, kind, entry, element):
    # The good entry in front is not run either: the Bundle is checked before anything runs.
    response = api.post("", _bundle(kind, _create(), entry))
    expected = "Bundle.entry[1]" + (f".{element}" if element else "")
    outcome = _refused(response, 400, expected)
    assert outcome["issue"][0]["diagnostics"].startswith("Bundle.entry[1]")


@pytest.mark.parametrize("kind", ["batch", "transaction"])
def test_bundle_entry_that_is_not_an_array(api, unchanged, kind):
    _refused(
        api.post("", {"resourceType": "Bundle", "type": kind, "entry": {}}), 400, "Bundle.entry"
    )


def _patch_entry(stored, text: str) -> dict:
    import base64

    return {
        "resource": {
            "resourceType": "Binary",
            "contentType": "application/json-patch+json",
            "data": base64.b64encode(text.encode()).decode(),
        },
        "request": {"method": "PATCH", "url": f"Patient/{stored['id']}"},
    }


def test_bundle_entries_with_nul_or_bad_json_fail_alone_in_a_batch(api, stored, unchanged):
    entries = [
        {"request": {"method": "GET", "url": "Patient?name=Ab%00"}},
        {
            "resource": patient(),
            "request": {"method": "POST", "url": "Patient", "ifNoneExist": "name=\x00"},
        },
        _patch_entry(stored, "[" * 1000 + "]" * 1000),
        _patch_entry(stored, '[{"op":"add","op":"remove","path":"/gender","value":"male"}]'),
        {"request": {"method": "GET", "url": f"Patient/{stored['id']}/_history/%C2%B2"}},
    ]
    response = api.post("", _bundle("batch", *entries))
    assert response.status_code == 200, response.content
    statuses = [entry["response"]["status"] for entry in response.json()["entry"]]
    assert statuses == ["400", "400", "400", "400", "404"]
    for index, entry in enumerate(response.json()["entry"][:4]):
        issue = entry["response"]["outcome"]["issue"][0]
        assert issue["diagnostics"].startswith(f"Bundle.entry[{index}]")


def test_a_transaction_with_a_nul_search_fails_whole(api, unchanged):
    bundle = _bundle(
        "transaction", _create(), {"request": {"method": "GET", "url": "Patient?name=%00"}}
    )
    _refused(api.post("", bundle), 400)
