"""Search benchmark: index cost per resource, and the latency and plan of
`Observation?patient=X&code=Y&date=ge...` on a tenant with many observations.

    python scripts/bench_search.py                      # quick: 200 patients, 20,000 observations
    python scripts/bench_search.py --patients 1000 --observations 100000

Uses DATABASE_URL. Data goes into the tenant `--tenant` (default bench-search), created on
first use and reused afterwards (only the missing observations are added).
"""

import argparse
import os
import random
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fhirplatform.settings")

import django

django.setup()

from django.db import connection, transaction  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from fhirplatform.fhir.models import Resource  # noqa: E402
from fhirplatform.fhir.search.selectors import search_bundle  # noqa: E402
from fhirplatform.fhir.search.services import index_resources  # noqa: E402
from fhirplatform.schemas import schema_activate  # noqa: E402
from tenants.models import ApiClient, Grant, Tenant  # noqa: E402
from tenants.scopes import scopes_parse  # noqa: E402
from tenants.services import client_create, tenant_create  # noqa: E402
from tenants.tokens import Caller  # noqa: E402

CODES = ["8867-4", "9279-1", "8310-5", "29463-7", "8302-2", "55284-4", "2339-0", "718-7"]
BATCH = 2000


def tenant_and_caller(slug: str) -> tuple[Tenant, Caller]:
    tenant = Tenant.objects.filter(slug=slug).first() or tenant_create(
        slug=slug, name="Search benchmark"
    )
    grant = Grant.objects.filter(tenant=tenant).select_related("client").first()
    if grant is None:
        client_create(partner_name="Search benchmark", tenant_slugs=[slug], scopes="system/*.rs")
        grant = Grant.objects.filter(tenant=tenant).select_related("client").get()
    client: ApiClient = grant.client
    caller = Caller(
        tenant=tenant,
        client=client,
        grant=grant,
        scopes=scopes_parse(grant.scopes),
        token_id="bench",  # noqa: S106 - a label, not a credential
    )
    return tenant, caller


def resource_row(resource_type: str, content: dict, when: datetime) -> Resource:
    logical_id = str(uuid.uuid4())
    body = {
        "resourceType": resource_type,
        "id": logical_id,
        **content,
        "meta": {"versionId": "1", "lastUpdated": when.isoformat().replace("+00:00", "Z")},
    }
    return Resource(
        resource_type=resource_type,
        logical_id=logical_id,
        version_id=1,
        last_updated=when,
        content=body,
    )


def load(patients: int, observations: int, rng: random.Random) -> tuple[int, float, int]:
    """Top the tenant up to the requested sizes. Returns (resources indexed, seconds, rows)."""
    now = datetime.now(UTC)
    have_patients = list(
        Resource.objects.filter(resource_type="Patient").values_list("logical_id", flat=True)
    )
    new_rows = [
        resource_row(
            "Patient",
            {
                "name": [{"family": f"Fam{n}", "given": ["Given"]}],
                "gender": rng.choice(["male", "female"]),
                "birthDate": f"{rng.randint(1930, 2020)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}",
            },
            now,
        )
        for n in range(len(have_patients), patients)
    ]
    patient_ids = have_patients + [r.logical_id for r in new_rows]
    missing = observations - Resource.objects.filter(resource_type="Observation").count()
    for _ in range(max(0, missing)):
        when = datetime(2015, 1, 1, tzinfo=UTC) + timedelta(
            minutes=rng.randint(0, 10 * 365 * 24 * 60)
        )
        new_rows.append(
            resource_row(
                "Observation",
                {
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
                    "code": {"coding": [{"system": "http://loinc.org", "code": rng.choice(CODES)}]},
                    "subject": {"reference": f"Patient/{rng.choice(patient_ids)}"},
                    "effectiveDateTime": when.isoformat().replace("+00:00", "Z"),
                    "valueQuantity": {
                        "value": round(rng.uniform(40, 180), 1),
                        "unit": "/min",
                        "system": "http://unitsofmeasure.org",
                        "code": "/min",
                    },
                },
                now,
            )
        )
    seconds, index_rows = 0.0, 0
    for start in range(0, len(new_rows), BATCH):
        with transaction.atomic():
            created = Resource.objects.bulk_create(new_rows[start : start + BATCH])
            began = time.perf_counter()
            index_rows += index_resources(resources=created)
            seconds += time.perf_counter() - began
    if new_rows:
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    return len(new_rows), seconds, index_rows


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tenant", default="bench-search")
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--observations", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument(
        "--pages", type=int, default=20, help="next links followed in the deep-paging run"
    )
    args = parser.parse_args()
    rng = random.Random(4)

    tenant, caller = tenant_and_caller(args.tenant)
    schema_activate(tenant)
    loaded, seconds, rows = load(args.patients, args.observations, rng)
    if loaded:
        print(
            f"indexed {loaded} resources in {seconds:.2f} s: "
            f"{seconds / loaded * 1e6:.0f} µs per resource (extraction + COPY), "
            f"{rows / loaded:.1f} index rows per resource"
        )
    total = Resource.objects.filter(resource_type="Observation").count()
    print(
        f"tenant {args.tenant}: {total} observations, "
        f"{Resource.objects.filter(resource_type='Patient').count()} patients"
    )

    patients = list(
        Resource.objects.filter(resource_type="Patient").values_list("logical_id", flat=True)
    )
    base = f"http://bench/fhir/{args.tenant}"

    def query() -> list[tuple[str, str]]:
        return [
            ("patient", rng.choice(patients)),
            ("code", f"http://loinc.org|{rng.choice(CODES)}"),
            ("date", f"ge{rng.randint(2015, 2023)}-0{rng.randint(1, 9)}-01"),
        ]

    # The search engine alone: no consent guard (bench_cache measures the pipeline's).
    observations = partial(
        search_bundle,
        caller=caller,
        resource_type="Observation",
        base_url=base,
        strict=True,
        consent=None,
    )
    for _ in range(10):  # warm caches and the compiled registry
        observations(params=query())
    timings, matches = [], []
    for _ in range(args.queries):
        params = query()
        began = time.perf_counter()
        bundle = observations(params=params)
        timings.append((time.perf_counter() - began) * 1000)
        matches.append(len(bundle.get("entry", [])))
    print(
        f"Observation?patient=X&code=Y&date=ge... in-process "
        f"(search_bundle, {args.queries} queries): "
        f"p50 {statistics.median(timings):.2f} ms, p99 {percentile(timings, 0.99):.2f} ms, "
        f"mean matches {statistics.mean(matches):.1f}"
    )

    # A broad search sorted by date, paged deep: keyset pages cost the same at any depth.
    broad = [("code", f"http://loinc.org|{CODES[0]}"), ("_sort", "-date"), ("_count", "50")]
    page_ms: list[float] = []
    bundle = observations(params=broad)
    for _ in range(args.pages):
        url = next((li["url"] for li in bundle["link"] if li["relation"] == "next"), None)
        if url is None:
            break
        params = parse_qsl(urlsplit(url).query)
        began = time.perf_counter()
        bundle = observations(params=params)
        page_ms.append((time.perf_counter() - began) * 1000)
    if page_ms:
        print(
            f"Observation?code=Y&_sort=-date&_count=50, next pages 2..{len(page_ms) + 1}: "
            f"first {page_ms[0]:.1f} ms, last {page_ms[-1]:.1f} ms, "
            f"p50 {statistics.median(page_ms):.1f} ms"
        )

    with CaptureQueriesContext(connection) as captured:
        observations(params=query())
    page_sql = next(q["sql"] for q in captured.captured_queries if "ORDER BY" in q["sql"])
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, COSTS OFF) " + page_sql)
        plan = [row[0] for row in cursor.fetchall()]
    print("plan of the page query:")
    for line in plan:
        print("   ", line)
    scans = [line.strip().lstrip("-> ").split(" (actual")[0] for line in plan if "Scan" in line]
    print("scans:", "; ".join(scans))
    if any("Seq Scan" in line for line in plan):
        print("WARNING: a sequential scan is in the plan")


if __name__ == "__main__":
    main()
