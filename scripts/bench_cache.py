#!/usr/bin/env python
"""Consent + response-cache benchmark: what the cache saves, what the consent decision
costs, the hit ratio of a mixed workload, and how soon a consent write or a token
revocation is enforced.

    .venv/bin/python scripts/bench_cache.py            # about 5-6 minutes
    .venv/bin/python scripts/bench_cache.py --quick    # a smoke run of about a minute

Reuses scripts/bench_fhir.py's machinery (servers side by side, wrk through
scripts/bench_load.py, synthetic data, medians of interleaved rounds) and
scripts/bench_revocation.py's readers and token trial. Two gunicorns (--workers x
--threads, default 2 x 4 as `make run`): the platform, and the bare Django view of
scripts/bench_fhir_settings.py. Five tenants on a count-only plan (limits counted, nothing
refused), the first four filled with the same synthetic data (same seed, same ids):

- `on`: cached: cache rules of ttl --ttl (default 3600 s) for Patient and Observation, so
  that entries outlive the rounds; the consent policy below and Consents;
- `off`: uncached, else the same as `on`: a tenant cache rule of ttl 0 for Patient and
  Observation (fhirplatform/cache/services.py:cache_rule_set), so every request still
  looks up (one Redis round trip, BYPASS) and the handler runs with the consent decision;
- `trivial`: uncached like `off`, with the initial policy and no Consents (the decision
  runs, on nothing);
- `mixed`: the default rules (PHI ttl CACHE_PHI_TTL_SECONDS), the consent policy and
  Consents, for the mixed workload (its writes would invalidate `on`'s entries);
- `trials`: empty, for the consent trials; the token trials use bench_revocation's tenant.

The consent policy (consent/services.py:policy_update): default permit, purposes TREAT and
HPAYMT, label R explicit, another partner denied by default; every second patient has a
Consent (a permit with a nested deny of that other partner, or a permit naming the reader
client), POSTed through the FHIR API. The reader's tokens carry purpose TREAT; every read
is permitted, so answers are 200s.

Each of --rounds rounds (default 3) runs wrk (--seconds each, default 4; --connections,
default 8) against: the bare view, read on `off`, read on `trivial`, read on `on`, search
(Observation?patient&code&date over --search-ids patients x 5 codes) on `off` and on
`on`, the same four reads and searches over one connection (a request's own latency, with
no queue behind the other connections: on a saturated machine the p50 of 8 connections is
their count over the throughput), and the mixed workload on `mixed`; every target is
warmed for --warm seconds first. Printed:

1. uncached vs cached read and search, p50/p99 and ratios (goal: cached >= 3x faster);
   the hit share of each cached measurement from the tenant's statistics (cache_stats
   before and after) and the X-Cache of a sample sent after the rounds;
   and the same searches spelled anew each time (`variant`: a random `_elements` of three
   of ten elements, 720 spellings each): the response tier rarely holds that spelling,
   the semantic tier holds the search's page (hit shares of both tiers, cache_stats);
2. the consent-on uncached read against the bare view (goal p50 <= 1.5x) and against
   the consent-trivial tenant (what the consent decision adds);
3. the mixed workload's hit ratio (reads and searches over ids picked with a skew, 5% of
   requests creating Observations, which invalidate that patient's reads and every
   Observation search), from wrk's count of X-Cache answers and from cache_stats;
4. consent write -> first denial: reader processes (bench_revocation's) read a cached
   Observation back to back while a writer client POSTs a Consent denying the reader;
   from just before the POST to the first 404 answered, p50/p99, and the 200s answered
   to requests sent after the POST returned (must be 0); token revocation -> first
   denial (bench_revocation's token trial: tenants.services.token_revoke). --trials each
   (default 200: the p99 is the worst but one), interleaved (goal p99 < 50 ms); the worst
   trial and how many took 50 ms or more are printed beside.

Load average before and after. Servers' output goes to .data/bench-cache/.
"""

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("LOG_LEVEL", "WARNING")  # the services' log lines are not the report
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import django  # noqa: E402
import requests  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fhirplatform.settings")
django.setup()

from consent.services import ConsentPolicyError, policy_update  # noqa: E402
from fhirplatform.cache.services import cache_rule_set  # noqa: E402
from fhirplatform.fhir.models import Resource  # noqa: E402
from fhirplatform.fhir.synthetic import OBSERVATION_KINDS  # noqa: E402
from fhirplatform.schemas import tenant_schema  # noqa: E402
from scripts import bench_revocation  # noqa: E402
from scripts.bench_cache_support import (  # noqa: E402
    MixedLoad,
    TrialWorld,
    consent_trial,
    goals_print,
    line,
    mixed_text,
    percent,
    report_trials,
    report_wrk,
    stats_delta,
    stats_hit_share,
    stats_now,
    xcache_counts,
    xcache_sample,
)
from scripts.bench_fhir import (  # noqa: E402
    BENCH_PLAN,
    Target,
    _median_of,
    _server_environment,
    _start_together,
    _tenant,
)
from scripts.bench_load import Bench, Load, measure  # noqa: E402
from scripts.bench_report import load_text  # noqa: E402
from scripts.loopback import Server, gunicorn_server  # noqa: E402
from tenants.models import Grant, Tenant  # noqa: E402
from tenants.scopes import scopes_parse  # noqa: E402
from tenants.services import client_create, tenant_create, token_issue  # noqa: E402
from tests.consent.enforcement_support import client_actor, consent, partner_actor  # noqa: E402

LOGS = ROOT / ".data" / "bench-cache"
PURPOSE = "TREAT"
READER = "cache bench reader"
OTHER = "cache bench other partner"
WRITER = "cache bench writer"
SCOPES = "system/*.cruds"
CODES = [kind[0] for kind in OBSERVATION_KINDS[:5]]  # few enough that a warm-up fills them
TYPES = ("Patient", "Observation")
SINGLE_CONNECTION = frozenset({"read1_off", "read1_on", "search1_off", "search1_on"})


@dataclass(frozen=True)
class Cast:
    tenant: Tenant
    reader: Grant
    writer: Grant


def _client(tenant: Tenant, name: str, partner: str) -> Grant:
    found = Grant.objects.filter(tenant=tenant, client__name=name).first()
    return (
        found
        or client_create(
            partner_name=partner,
            tenant_slugs=[tenant.slug],
            scopes=SCOPES,
            plan_name=BENCH_PLAN,
            purposes=[PURPOSE, "HPAYMT"],
            name=name,
        ).grants[0]
    )


def _headers(grant: Grant, *, write: bool = False) -> dict[str, str]:
    # Tokens live at most 300 s: every measurement gets a fresh one.
    token = token_issue(
        grant=grant, scopes=scopes_parse(SCOPES), auth_method="benchmark", purpose=PURPOSE
    ).access_token
    made = {"Accept": "application/fhir+json", "Authorization": f"Bearer {token}"}
    if write:
        made |= {"Content-Type": "application/fhir+json", "Prefer": "return=minimal"}
    return made


def _writer_headers(cast: "Cast") -> dict[str, str]:
    # The trials read the created resources' ids from the answer.
    return _headers(cast.writer, write=True) | {"Prefer": "return=representation"}


def _cast(slug: str, args: argparse.Namespace, *, data: bool, consent_on: bool, ttl: int) -> Cast:
    """A tenant with its reader and writer; its data, consent policy and cache rules
    (ttl None: the defaults; 0: uncached)."""
    if data:
        tenant = _tenant(slug, args.patients, args.observations, args.seed)
    else:
        tenant = Tenant.objects.filter(slug=slug).first() or tenant_create(
            slug=slug, name="Cache benchmark", plan_name=BENCH_PLAN
        )
    reader = _client(tenant, READER, "Cache bench readers")
    other = _client(tenant, OTHER, "Cache bench others")
    if consent_on:
        try:
            policy_update(
                tenant=tenant,
                by="bench_cache",
                note="benchmark policy",
                allowed_purposes=[PURPOSE, "HPAYMT"],
                explicit_labels=["R"],
                partner_defaults={other.client.partner.slug: "deny"},
            )
        except ConsentPolicyError as error:
            if "nothing changed" not in str(error):
                raise
    if ttl >= 0:
        for resource_type in TYPES:
            cache_rule_set(tenant=tenant, resource_type=resource_type, ttl_seconds=ttl)
    return Cast(tenant, reader, _client(tenant, WRITER, "Cache bench writers"))


def _consents(base: str, cast: Cast, ids: list[str]) -> None:
    """Consents for every second patient, POSTed through the FHIR API (once per tenant)."""
    with tenant_schema(cast.tenant):
        if Resource.objects.filter(resource_type="Consent").exists():
            return
    other_slug = Grant.objects.get(tenant=cast.tenant, client__name=OTHER).client.partner.slug
    reader_id = cast.reader.client.client_id
    with requests.Session() as session:
        session.headers.update(_headers(cast.writer, write=True))
        for number, patient_id in enumerate(ids[::2]):
            if number % 2:
                provision = {"type": "permit", "actor": client_actor(reader_id)}
            else:
                deny = {"type": "deny", "actor": partner_actor(other_slug)}
                provision = {"type": "permit", "provision": [deny]}
            response = session.post(
                f"{base}/fhir/{cast.tenant.slug}/Consent",
                json=consent(patient_id, provision),
                timeout=30,
            )
            if response.status_code != 201:
                raise SystemExit(f"Consent for {patient_id}: {response.text[:300]}")


@dataclass(frozen=True)
class MixedTarget(Target):
    """The mixed workload; X-Cache answers counted into `report`."""

    report: Path = Path()
    write_share: float = 0.05
    writer: Grant | None = None

    def load(self) -> Load:
        return MixedLoad(
            "mixed",
            self.prefix,
            self.headers(),
            post_headers=_headers(self.writer, write=True) if self.writer else None,
            report=str(self.report),
            write_share=self.write_share,
        )


def _targets(
    platform: Server, bare: Server, casts: dict[str, Cast], args: argparse.Namespace, scratch: Path
) -> list[Target]:
    def reader(role: str) -> Target:
        return Target(role, role, platform, f"/fhir/{casts[role].tenant.slug}", lambda: {})

    def of(role: str, key: str, label: str, kind: str = "read") -> Target:
        grant = casts[role].reader
        prefix = reader(role).prefix
        return Target(key, label, platform, prefix, lambda: _headers(grant), kind)

    bare_prefix = f"/bench-bare/{casts['off'].tenant.slug}"
    mixed = casts["mixed"]
    return [
        Target("bare", "bare Django view", bare, bare_prefix, lambda: {"Accept": "*/*"}),
        of("off", "read_off", "read, uncached (consent on)"),
        of("trivial", "read_trivial", "read, uncached (consent trivial)"),
        of("on", "read_on", "read, cached"),
        of("off", "search_off", "search, uncached", "search"),
        of("on", "search_on", "search, cached", "search"),
        of("off", "read1_off", "read, uncached, 1 connection"),
        of("on", "read1_on", "read, cached, 1 connection"),
        of("off", "search1_off", "search, uncached, 1 connection", "search"),
        of("on", "search1_on", "search, cached, 1 connection", "search"),
        of("off", "variant_off", "search variants, uncached", "variant"),
        of("on", "variant_on", "search variants, cached", "variant"),
        MixedTarget(
            "mixed",
            f"mixed ({args.write_share:.0%} writes)",
            platform,
            f"/fhir/{mixed.tenant.slug}",
            lambda: _headers(mixed.reader),
            "mixed",
            report=scratch / "mixed-xcache.txt",
            write_share=args.write_share,
            writer=mixed.writer,
        ),
    ]


def _rounds(
    args: argparse.Namespace, targets: list[Target], bench: Bench, casts: dict[str, Cast]
) -> tuple[dict[str, list[dict[str, float]]], dict[str, Counter[str]]]:
    """Every target once per round after a warm-up of each; the cache's statistics of each
    platform measurement (the tenant's counters before and after) go with its result."""
    warm = Bench(args.warm, bench.connections, bench.wrk_threads, bench.ids, CODES, bench.scratch)
    # One connection: a request's own latency, no queue behind the other connections.
    single = Bench(bench.seconds, 1, 1, bench.ids, CODES, bench.scratch)
    for target in targets:
        measure(_for(warm, target, args), target.server, target.load())
    rounds: dict[str, list[dict[str, float]]] = {}
    mixed_xcache: dict[str, Counter[str]] = {"xcache": Counter(), "stats": Counter()}
    for number in range(1, args.rounds + 1):
        print(f"-- round {number}, load average {load_text(os.getloadavg())}", flush=True)
        for target in targets:
            role = target.key.split("_")[-1] if target.key != "mixed" else "mixed"
            schema = casts[role].tenant.schema_name if role in casts else None
            before = stats_now(schema) if schema else {}
            runs = single if target.key in SINGLE_CONNECTION else bench
            result = measure(_for(runs, target, args), target.server, target.load())
            delta = stats_delta(before, stats_now(schema)) if schema else {}
            hit = stats_hit_share(delta)
            result["stats_hit_share"] = -1.0 if hit is None else hit
            extra = f"hits (cache_stats) {percent(hit)}" if role in ("on", "mixed") else ""
            if target.kind == "variant" and role == "on":
                semantic = stats_hit_share(delta, prefix="semantic_")
                result["stats_semantic_share"] = -1.0 if semantic is None else semantic
                extra += f", semantic {percent(semantic)}"
            if isinstance(target, MixedTarget):
                counted = xcache_counts(target.report)
                mixed_xcache["xcache"].update(counted)
                mixed_xcache["stats"].update({k: int(v) for k, v in delta.items()})
                extra += "  " + mixed_text(counted)
            rounds.setdefault(target.key, []).append(result)
            print(line(target.label, result, extra), flush=True)
    return rounds, mixed_xcache


def _for(bench: Bench, target: Target, args: argparse.Namespace) -> Bench:
    # Searches over --search-ids patients: few enough distinct searches for the warm-up to
    # fill them, so the cached rows measure hits (an uncached search costs ~20 ms of CPU).
    if target.kind not in ("search", "variant"):
        return bench
    return dataclasses.replace(bench, ids=bench.ids[: args.search_ids])


def _sample(
    platform: Server, cast: Cast, ids: list[str], count: int, search_ids: int
) -> Counter[str]:
    """X-Cache of `count` reads and `count` searches on the cached tenant, after the rounds."""
    base = f"{platform.url}/fhir/{cast.tenant.slug}"
    urls = [f"{base}/Patient/{ids[n % len(ids)]}" for n in range(count)]
    urls += [
        f"{base}/Observation?patient={ids[n % search_ids]}&code=http%3A%2F%2Floinc.org%7C"
        f"{CODES[n % len(CODES)]}&date=ge2018-01-01"
        for n in range(count)
    ]
    return xcache_sample(urls, _headers(cast.reader))


def _trials(
    args: argparse.Namespace, platform: Server, cast: Cast
) -> tuple[list, list[bench_revocation.Trial]]:
    """Consent trials and token trials, taking turns."""
    readers = bench_revocation.Readers(args.readers, 0)
    world = TrialWorld(
        fhir=f"{platform.url}/fhir/{cast.tenant.slug}",
        reader_client_id=cast.reader.client.client_id,
        reader_headers=_headers(cast.reader),
        writer_headers=_writer_headers(cast),
    )
    revocation_tenant = Tenant.objects.filter(slug="bench-revocation").first() or tenant_create(
        slug="bench-revocation", name="Revocation benchmark", plan_name=BENCH_PLAN
    )
    # The token trial reads when the revocation was published through this hook.
    bench_revocation.token_cache._generation_bump = bench_revocation._timed_generation_bump
    consents, tokens = [], []
    with requests.Session() as writer:
        writer.headers.update(world.writer_headers)
        for number in range(args.trials):
            if number and number % 50 == 0:  # tokens live 300 s
                world = TrialWorld(
                    world.fhir, world.reader_client_id, _headers(cast.reader), world.writer_headers
                )
                writer.headers.update(_headers(cast.writer, write=True))
            consents.append(consent_trial(world, readers, writer))
            tokens.append(
                bench_revocation._trial(platform.url, "token", revocation_tenant, readers)
            )
    return consents, tokens


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of about a minute")
    parser.add_argument("--patients", type=int, default=100)
    parser.add_argument("--observations", type=int, default=2_000)
    parser.add_argument("--seconds", type=int, default=4, help="per measurement")
    parser.add_argument("--warm", type=int, default=2, help="seconds of warm-up per target")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=8, help="wrk's")
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--log-level", default="WARNING", help="LOG_LEVEL of the servers")
    parser.add_argument("--ttl", type=int, default=3600, help="the cached tenant's ttl")
    parser.add_argument("--write-share", type=float, default=0.05, help="of the mixed load")
    parser.add_argument("--trials", type=int, default=200, help="of each kind")
    parser.add_argument("--readers", type=int, default=4, help="reader threads per trial")
    parser.add_argument("--search-ids", type=int, default=20, help="patients searched")
    parser.add_argument("--sample", type=int, default=50, help="reads and searches sampled")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.warm, args.rounds, args.trials, args.sample = 2, 1, 1, 10, 20
    return args


def main() -> None:
    args = _arguments()
    started, load_before = time.monotonic(), os.getloadavg()
    size = f"{args.patients}p-{args.observations}o"
    casts = {
        "on": _cast(f"bc-on-{size}", args, data=True, consent_on=True, ttl=args.ttl),
        "off": _cast(f"bc-off-{size}", args, data=True, consent_on=True, ttl=0),
        "trivial": _cast(f"bc-trivial-{size}", args, data=True, consent_on=False, ttl=0),
        "mixed": _cast(f"bc-mixed-{size}", args, data=True, consent_on=True, ttl=-1),
        "trials": _cast("bc-trials", args, data=False, consent_on=False, ttl=-1),
    }
    with tenant_schema(casts["on"].tenant):
        ids = sorted(
            Resource.objects.filter(resource_type="Patient", deleted=False).values_list(
                "logical_id", flat=True
            )[:500]
        )
    LOGS.mkdir(parents=True, exist_ok=True)
    env = _server_environment(args) | {"LIMITS_REFUSALS_PER_IP": "1000000/m"}
    size_of = {"workers": args.workers, "threads": args.threads, "startup_seconds": 240}
    bare_env = env | {"DJANGO_SETTINGS_MODULE": "scripts.bench_fhir_settings"}
    with ExitStack() as stack:
        platform, bare = _start_together(
            stack,
            [
                gunicorn_server(env=env, log=LOGS / "platform.log", **size_of),
                gunicorn_server(env=bare_env, log=LOGS / "bare.log", **size_of),
            ],
        )
        for role in ("on", "off", "mixed"):
            _consents(platform.url, casts[role], ids)
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-cache-")))
        targets = _targets(platform, bare, casts, args, scratch)
        for target in targets:
            target.check(ids[0], CODES[0])
        print(
            f"{len(ids)} patients per tenant, wrk {args.connections} connections, gunicorn "
            f"{args.workers} workers x {args.threads} threads, {args.seconds} s per "
            f"measurement, {args.rounds} round(s); load average {load_text(load_before)}",
            flush=True,
        )
        bench = Bench(args.seconds, args.connections, args.wrk_threads, ids, CODES, scratch)
        rounds, mixed = _rounds(args, targets, bench, casts)
        sample = _sample(platform, casts["on"], ids, args.sample, args.search_ids)
        consents, tokens = _trials(args, platform, casts["trials"])
    medians = {key: _median_of(measured) for key, measured in rounds.items()}
    print(f"\nmedians of {args.rounds} round(s):")
    for target in targets:
        print(line(target.label, medians[target.key]))
    goals = report_wrk(medians, sample, mixed)
    goals |= report_trials(consents, tokens, args.readers)
    goals_print(goals)
    print(
        f"\nload average (1/5/15 min) before {load_text(load_before)}, "
        f"after {load_text(os.getloadavg())}; total {time.monotonic() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
