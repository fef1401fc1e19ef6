"""Input generators for tests/fhir/test_fuzz.py: resource bodies, search parameters,
headers and Bundle entries, mostly well-formed enough to get past the first check and
reach the code behind it, with NUL, lone surrogates, control characters, other scripts'
digits, out-of-range dates and numbers, duplicate keys and deep nesting mixed in."""

import base64
import json
from typing import Any

from hypothesis import strategies as st

from fhirplatform.fhir.search.registry import search_parameters_for
from tests.fhir.rest_support import observation, patient

STORED_ID = "fuzz-patient"

TYPES = [
    "Patient",
    "Observation",
    "Organization",
    "Encounter",
    "Condition",
    "Questionnaire",
    "RiskAssessment",
    "MedicinalProduct",  # an R4 type without an R4B model
    "Binary",
    "Bundle",
]
SPECIALS = [
    "\x00",
    "\ud800",
    "\udfff",
    "\x01",
    "\x1f",
    "\x7f",
    "\u2028",
    "\ufeff",
    "\u0661\u0662",
    "\u00b2",
    "%00",
    "%",
    "%ZZ",
    "\\",
    '"',
    ",",
    "|",
    "$",
    "&",
    "=",
    "?",
    "#",
    "/",
    ":",
    ".",
    "*",
    " ",
    "e999999",
    "-",
    "9" * 30,
]
KEYS = [
    "resourceType",
    "id",
    "meta",
    "versionId",
    "lastUpdated",
    "tag",
    "text",
    "status",
    "clinicalStatus",
    "intent",
    "div",
    "contained",
    "extension",
    "modifierExtension",
    "url",
    "valueString",
    "valueDecimal",
    "valueQuantity",
    "value",
    "code",
    "system",
    "coding",
    "display",
    "reference",
    "subject",
    "name",
    "family",
    "given",
    "birthDate",
    "_birthDate",
    "gender",
    "identifier",
    "effectiveDateTime",
    "period",
    "start",
    "end",
    "item",
    "linkId",
    "data",
    "contentType",
]
DATES = [
    "1974-12-25",
    "2024-03",
    "2024",
    "2024-03-01T10:00:00Z",
    "2024-03-01T10:00:00.123456789+05:30",
    "0001-01-01",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31",
    "9999-12-31T23:59:59-14:00",
    "10000-01-01",
    "2024-02-30",
    "2024-01-01T25:00:00Z",
    "2024-01-01T00:00:00+99:00",
]

text = st.lists(st.one_of(st.text(max_size=6), st.sampled_from(SPECIALS)), max_size=5).map("".join)
latin1 = st.lists(
    st.one_of(st.text(st.characters(max_codepoint=255), max_size=8), st.sampled_from(SPECIALS[:1])),
    max_size=4,
).map("".join)
keys = st.one_of(st.sampled_from(KEYS), text)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # NaN and infinities included: json.dumps writes them, JSON has none
    text,
    st.sampled_from(DATES),
    st.sampled_from(["Patient/x", f"Patient/{STORED_ID}", "#org", "male", "final", "urn:uuid:x"]),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)
    ),
    max_leaves=15,
)


def dumps(value: Any) -> str:
    return json.dumps(value)  # ensure_ascii: lone surrogates travel as \ud800 escapes


@st.composite
def resource_texts(draw: st.DrawFn) -> tuple[str, str | bytes]:
    """(resource type, body): valid resources with random parts, random objects, raw JSON
    with duplicate keys, deep nesting, edits of valid text, and bytes."""
    resource_type = draw(st.sampled_from(TYPES))
    kind = draw(st.integers(0, 5))
    if kind == 0:
        base = draw(st.sampled_from([patient(), observation("Patient/x"), {}]))
        extra = draw(st.dictionaries(keys, json_values, max_size=4))
        return resource_type, dumps({**base, **extra, "resourceType": resource_type})
    if kind == 1:
        return resource_type, dumps(draw(json_values))
    if kind == 2:
        pairs = draw(st.lists(st.tuples(keys, json_values), min_size=1, max_size=5))
        members = [("resourceType", resource_type), *pairs]
        return resource_type, "{" + ",".join(f"{dumps(k)}:{dumps(v)}" for k, v in members) + "}"
    if kind == 3:
        depth = draw(st.integers(1, 1500))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        inner = opener * depth + "1" + closer * depth
        return resource_type, f'{{"resourceType":"{resource_type}","extension":{inner}}}'
    if kind == 4:
        valid = dumps(patient())
        cut = draw(st.integers(0, len(valid)))
        return "Patient", valid[:cut] + draw(text) + valid[cut:]
    return resource_type, draw(st.binary(max_size=80))


CONTROL = [
    "_id",
    "_lastUpdated",
    "_count",
    "_sort",
    "_summary",
    "_elements",
    "_include",
    "_revinclude",
    "_total",
    "_type",
    "_cursor",
    "_since",
    "_has:Observation:subject:code",
    "subject:Patient.name",
    "subject.birthdate",
    "general-practitioner:Organization.name",
]
MODIFIERS = [
    "",
    *[":exact", ":contains", ":missing", ":not", ":text", ":below", ":Patient", ":iterate"],
]
PREFIXES = ["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap", "zz"]


@st.composite
def search_params(draw: st.DrawFn, resource_type: str) -> list[tuple[str, str]]:
    names = [p.name for p in search_parameters_for(resource_type)] or ["name"]
    params = []
    for _ in range(draw(st.integers(1, 4))):
        name = draw(
            st.one_of(
                st.tuples(st.sampled_from(names), st.sampled_from(MODIFIERS)).map("".join),
                st.sampled_from(CONTROL),
                text,
            )
        )
        value = draw(
            st.one_of(
                st.tuples(st.sampled_from(PREFIXES), st.sampled_from(DATES)).map("".join),
                st.tuples(
                    st.sampled_from(PREFIXES),
                    st.one_of(st.decimals(allow_nan=True).map(str), st.integers().map(str), text),
                ).map("".join),
                st.sampled_from(
                    [
                        "http://loinc.org|8867-4",
                        "|x",
                        "x|",
                        "|",
                        f"Patient/{STORED_ID}",
                        STORED_ID,
                        "http://x.org/fhir/Patient/1",
                        "Observation:subject",
                        "Observation:subject:Patient",
                        "count",
                        "true",
                        "1|http://unitsofmeasure.org|mg",
                        "-_lastUpdated",
                    ]
                ),
                text,
                st.lists(text, min_size=2, max_size=3).map(",".join),
            )
        )
        params.append((name, value))
    return params


@st.composite
def searches(draw: st.DrawFn) -> tuple[str, str, list[tuple[str, str]]]:
    resource_type = draw(st.sampled_from(TYPES[:6]))
    where = draw(st.sampled_from(["type", "form", "system", "history", "system-history"]))
    return resource_type, where, draw(search_params(resource_type))


HEADER_VALUES = st.one_of(
    latin1,
    st.sampled_from(
        [
            'W/"1"',
            '"1"',
            "1",
            'W/"\u0661"',
            'W/"\u00b2"',
            'W/"99999999999999999999999"',
            "*",
            "return=minimal",
            "return=representation",
            "return=OperationOutcome",
            "handling=strict",
            "identifier=urn:oid:1.2.36.146.595.217.0.1|Chalmers",
            "name=Chalmers&_count=1",
            "_id=fuzz-patient",
            "birthdate=ap9999",
            "Sat, 29 Oct 1994 19:43:31 GMT",
            "application/fhir+json; charset=utf-8",
            "multipart/form-data",
            "multipart/form-data; boundary=x",
            "application/x-www-form-urlencoded",
            "text/plain",
            "a" * 300,
        ]
    ),
)
REQUESTS = [
    ("GET", f"Patient/{STORED_ID}"),
    ("PUT", f"Patient/{STORED_ID}"),
    ("POST", "Patient"),
    ("PATCH", f"Patient/{STORED_ID}"),
    ("DELETE", f"Patient/{STORED_ID}"),
    ("GET", f"Patient/{STORED_ID}/_history/1"),
]


HEADER_NAMES = [
    "If-Match",
    "If-None-Match",
    "If-None-Exist",
    "If-Modified-Since",
    "Prefer",
    "Idempotency-Key",
    "X-Request-ID",
    "Accept",
]


URLS = [
    "Patient",
    f"Patient/{STORED_ID}",
    f"Patient/{STORED_ID}/_history/1",
    f"Patient/{STORED_ID}/_history/\u00b2",
    "Patient?name=Chalmers",
    "Patient?name=%00",
    "Observation?subject:Patient.name=x",
    "Patient?birthdate=ap0001",
    "http://[::1/Patient",
    "http://elsewhere.example/fhir/Patient",
    "http://localhost:8000/fhir/provider-a/Patient",
    "urn:uuid:1",
    "Nonsense/1",
    "Patient/a/b/c/d/e",
    "",
]


def _binary(value: Any) -> dict[str, Any]:
    data = base64.b64encode(dumps(value).encode()).decode()
    return {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": data}


def or_junk(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the well-typed value, sometimes any JSON at all."""
    return st.one_of(strategy, strategy, json_values)


entries = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {
            "request": or_junk(
                st.fixed_dictionaries(
                    {
                        "method": or_junk(
                            st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])
                        ),
                        "url": or_junk(st.one_of(st.sampled_from(URLS), text)),
                    },
                    optional={
                        "ifNoneExist": or_junk(
                            st.sampled_from(["name=Chalmers", "x=1", "_count=1"])
                        ),
                        "ifMatch": or_junk(st.sampled_from(['W/"1"', 'W/"\u0661"', "x"])),
                        "ifNoneMatch": or_junk(st.sampled_from(['W/"1"', "*"])),
                    },
                )
            )
        },
        optional={
            "fullUrl": or_junk(st.sampled_from(["urn:uuid:1", "urn:uuid:2", "http://[::1/x"])),
            "resource": st.one_of(
                st.sampled_from([patient(), patient(id=STORED_ID), observation("urn:uuid:1")]),
                json_values.map(_binary),
                json_values,
            ),
        },
    ),
)
