"""The response cache and the consent guard, as the FHIR pipeline uses them.

One Redis round trip after admission (`cache_lookup`) answers a cached read or search
and, hit or miss, brings the tenant's generation tokens the rest of the request stands
on: the consent snapshot (POLICY, CONSENT), the cache rules (POLICY) and the fill (EPOCH,
which must not have moved while the answer was read from PostgreSQL). A request that is
no read or search reads the tokens only when it needs the consent guard.

An entry is filled only after the handler answered 200 under a permitting consent
decision, and depends on the generations that decision and that data stand on:

- a read or vread: the tenant's POLICY and each patient of the resource's compartment
  (a write to any resource of the patient, or to its Consents, bumps them), or the
  resource type's for a resource of no patient;
- a search: POLICY, CONSENT (a Consent of anyone may change what it leaves out) and each
  type it touched (searched, included, chained), or EPOCH when it may touch any; a
  search whose criterion names its patients (`Observation?patient=x`) stands on those
  patients' generations instead of its searched type's.

Its ttl is the type's rule (the shortest of a search's types), cut to the next instant a
Consent provision period starts or ends.

A search that missed may still find what its search part computed in the semantic tier
(fhirplatform/fhir/search/semantic.py), through its SearchCache: one more lookup per
entry it asks for, and its fills join the response's at the exit, under the same
dependencies and ttl, only when the whole answer was a 200 worth caching.
"""

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from django.http import HttpResponse
from django.http.response import HttpResponseBase
from django.utils import timezone
from rest_framework.request import Request

from consent.enforcement import ConsentGuard
from consent.snapshots import consent_snapshot
from fhirplatform.cache.generations import (
    CONSENT,
    EPOCH,
    POLICY,
    gen_patient,
    gen_type,
    generations_read,
)
from fhirplatform.cache.rules import Rule, cache_rules_for
from fhirplatform.cache.stats import cache_stats_denial
from fhirplatform.cache.store import Lookup, Namespace, cache_fill, cache_key, cache_lookup
from fhirplatform.fhir.compartments import PatientScope
from fhirplatform.fhir.http import query_pairs
from fhirplatform.fhir.representation import etag_version
from tenants.scopes import Interaction, scopes_text

if TYPE_CHECKING:
    from fhirplatform.fhir.auditing import AuditState
    from tenants.tokens import Caller

CACHEABLE = {Interaction.READ, Interaction.VREAD, Interaction.SEARCH}
TENANT_TOKENS = (POLICY.value, CONSENT.value)
# What a cached answer keeps of its headers; the pipeline adds its own to every answer.
_STORED_HEADERS = ("Content-Type", "ETag", "Last-Modified", "Location")
ANY_TYPE = "*"


class XCache(StrEnum):
    HIT = "HIT"
    MISS = "MISS"
    BYPASS = "BYPASS"


@dataclass
class CacheState:
    """The response cache's part of one request: the lookup, then what the fill needs."""

    key: str | None  # None: this request is not looked up (not a cacheable read)
    lookup: Lookup | None = None
    rules: Any = None  # TenantRules, when the lookup brought a POLICY token
    depends_on: list[str] = field(default_factory=list)  # set by the handler
    resource_types: list[str] = field(default_factory=list)  # whose rules give the ttl
    guard: ConsentGuard | None = None
    # The semantic tier's entries a search computed: (key, payload), filled at the exit.
    semantic_fills: list[tuple[str, bytes]] = field(default_factory=list)
    # Seconds the semantic entries the answer was built from stay fresh (the least of
    # them): the answer must not be cached longer than what it stands on.
    semantic_fresh_for: float | None = None

    @property
    def tokens(self) -> dict[str, str] | None:
        if self.lookup is None or self.lookup.bypass:
            return None
        return dict(self.lookup.tokens)


def _request_text(request: Request) -> str:
    """The normalised request: method, path, sorted query, and the headers that change
    the answer (Prefer: handling=strict changes a search's)."""
    query = sorted(query_pairs(request))
    return json.dumps(
        [request.method, request.path, query, request.headers.get("Prefer", "")],
        separators=(",", ":"),
    )


def cache_begin(*, caller: "Caller", interaction: Interaction, request: Request) -> CacheState:
    """Look the request up when it is a cacheable read (GET; a conditional If-Modified-Since
    is answered by the database); otherwise nothing is sent yet."""
    cacheable = (
        interaction in CACHEABLE
        and request.method == "GET"
        and "If-Modified-Since" not in request.headers
    )
    if not cacheable:
        return CacheState(key=None)
    schema = caller.tenant.schema_name
    key = cache_key(
        namespace=Namespace.RESPONSE,
        tenant_schema=schema,
        client_id=caller.client.client_id,
        scopes=scopes_text(caller.scopes),
        purpose=caller.purpose,
        request=_request_text(request),
    )
    state = CacheState(key=key)
    state.lookup = cache_lookup(key=key, tenant_schema=schema, tenant_names=TENANT_TOKENS)
    tokens = state.tokens
    if tokens is not None:
        state.rules = cache_rules_for(tenant=caller.tenant, policy_token=tokens[POLICY.value])
    return state


def cached_response(
    *, state: CacheState, request: Request, audit: "AuditState"
) -> HttpResponseBase | None:
    """The stored answer of a hit, with X-Cache and Age (a 304 for a matching If-None-Match);
    the patients it shows go to the request's audit event."""
    lookup = state.lookup
    if lookup is None or not lookup.hit or lookup.payload is None:
        return None
    head_line, _, body = lookup.payload.partition(b"\n")
    head = json.loads(head_line)
    if not isinstance(head, dict) or not isinstance(head.get("headers"), dict):
        return None  # an entry of another format: answered anew, and filled again
    headers = head["headers"]
    audit.saw(head.get("patients") or ())
    if_none_match = request.headers.get("If-None-Match")
    if (
        if_none_match
        and "ETag" in headers
        and etag_version(if_none_match) == etag_version(headers["ETag"])
    ):
        response = HttpResponse(status=304)
    else:
        response = HttpResponse(body, status=200)
    for name, value in headers.items():
        response[name] = value
    response["X-Cache"] = XCache.HIT
    response["Age"] = str(lookup.age)
    return response


def consent_guard(*, caller: "Caller", state: CacheState) -> ConsentGuard:
    """The caller's consent guard, on the snapshot the request's tokens name (read now,
    in one round trip, when no lookup brought them). Runs in the tenant's schema."""
    schema = caller.tenant.schema_name
    if state.guard is None:
        tokens = state.tokens
        if tokens is None and state.lookup is None:
            tokens = generations_read(tenant_schema=schema, names=[EPOCH.value, *TENANT_TOKENS])
        pair = (tokens[POLICY.value], tokens[CONSENT.value]) if tokens else None
        state.guard = ConsentGuard(
            snapshot=consent_snapshot(tenant_schema=schema, tokens=pair),
            tenant=caller.tenant.slug,
            client_id=caller.client.client_id,
            partner=caller.partner_slug,
            purpose=caller.purpose,
            now=timezone.now(),
        )
    return state.guard


def depends_on_resource(*, state: CacheState, resource_type: str, patients: list[str]) -> None:
    """A read's answer stands on its patients' generations (or its type's), and POLICY."""
    state.resource_types = [resource_type]
    dependencies = [gen_patient(p) for p in patients] if patients else [gen_type(resource_type)]
    state.depends_on = [POLICY.value, *dependencies]


def depends_on_search(
    *, state: CacheState, resource_types: set[str], scope: PatientScope | None = None
) -> None:
    """A search's answer stands on every type it touched, CONSENT and POLICY. `scope`: every
    match of the searched type is in these patients' compartments (a criterion names them),
    so that type stands on their generations instead of its own, and a write for another
    patient leaves the answer cached (a write that moves a resource into or out of their
    compartments bumps them: before and after)."""
    state.resource_types = sorted(t for t in resource_types if t != ANY_TYPE)
    names = [POLICY.value, CONSENT.value]
    if ANY_TYPE in resource_types:
        names.append(EPOCH.value)
    scoped = scope.resource_type if scope is not None else None
    names += [gen_type(t) for t in state.resource_types if t != scoped]
    names += [gen_patient(patient) for patient in scope.patients] if scope is not None else []
    state.depends_on = names


class SearchCache:
    """What a search asks of the cache (search_bundle's `cache`): the types it touches
    (its dependencies), and the semantic tier's entries of the caller's searches."""

    def __init__(self, *, caller: "Caller", state: CacheState) -> None:
        self.caller = caller
        self.state = state

    def touches(self, resource_types: set[str], *, scope: PatientScope | None) -> None:
        depends_on_search(state=self.state, resource_types=resource_types, scope=scope)

    def _key(self, parts: list[Any]) -> str:
        caller = self.caller
        return cache_key(
            namespace=Namespace.SEMANTIC,
            tenant_schema=caller.tenant.schema_name,
            client_id=caller.client.client_id,
            scopes=scopes_text(caller.scopes),
            purpose=caller.purpose,
            request=json.dumps(parts, separators=(",", ":"), default=str),
        )

    def get(self, parts: list[Any]) -> bytes | None:
        """The entry named by `parts`, while the generations it was filled under hold;
        None when there is none, or the answer is not cached (no lookup, Redis
        unreachable, a type that is never cached)."""
        state = self.state
        if state.tokens is None or _rule(state) is None:
            return None
        lookup = cache_lookup(
            key=self._key(parts), tenant_schema=self.caller.tenant.schema_name, tenant_names=()
        )
        if not lookup.hit or lookup.stale:
            # A stale entry would make a fresh answer: the search is run instead.
            return None
        known = state.semantic_fresh_for
        state.semantic_fresh_for = min(lookup.fresh_for, known if known is not None else 1e9)
        return lookup.payload

    def put(self, parts: list[Any], payload: bytes) -> None:
        """Keep `payload` under `parts`, once the whole answer is known to be cacheable."""
        if self.state.tokens is not None:
            self.state.semantic_fills.append((self._key(parts), payload))


def cache_finish(
    *,
    caller: "Caller",
    state: CacheState,
    response: HttpResponseBase,
    patients: Iterable[str] = (),
) -> None:
    """The exit's first step: count consent denials, fill the cache with a fresh 200 (with
    the `patients` it shows, for the audit events of its hits), and say what the cache
    did (X-Cache, Age)."""
    schema = caller.tenant.schema_name
    if state.guard is not None and state.guard.denials:
        cache_stats_denial(tenant_schema=schema)
    if state.key is None or state.lookup is None or state.lookup.hit:
        return
    rule = _rule(state)
    if rule is not None and response.status_code == 200 and state.depends_on:
        ttl = _ttl(rule, state)
        tokens = state.tokens
        if ttl > 0 and tokens is not None:
            fills = [(state.key, _payload(response, patients)), *state.semantic_fills]
            for key, payload in fills:
                cache_fill(
                    key=key,
                    tenant_schema=schema,
                    epoch_seen=tokens[EPOCH.value],
                    depends_on=state.depends_on,
                    payload=payload,
                    ttl=ttl,
                    swr=rule.swr,
                )
    if response.status_code in (200, 304):
        # Only answers say what the cache did: an error must look the same whether it came
        # from a lookup (a missing resource) or before one (another tenant's URL).
        cached = rule is not None and not state.lookup.bypass
        response["X-Cache"] = XCache.MISS if cached else XCache.BYPASS
        response["Age"] = "0"


def _rule(state: CacheState) -> Rule | None:
    """The rule of the answer's types (the shortest ttl, stale only if all may be);
    None when one of them is never cached, or no rules could be read."""
    if state.rules is None or not state.resource_types:
        return None
    rules = [state.rules.rule(t) for t in state.resource_types]
    if not all(rule.cached for rule in rules):
        return None
    return Rule(ttl=min(r.ttl for r in rules), swr=min(r.swr for r in rules))


def _ttl(rule: Rule, state: CacheState) -> int:
    """The rule's ttl, cut to the next instant a Consent period the decision read starts or
    ends, and to the freshness left of the semantic entries the answer was built from."""
    ttl = rule.ttl
    settled: datetime | None = state.guard.settled_until() if state.guard is not None else None
    if settled is not None:
        ttl = min(ttl, int((settled - timezone.now()).total_seconds()))
    if state.semantic_fresh_for is not None:
        ttl = min(ttl, int(state.semantic_fresh_for))
    return ttl


def _payload(response: HttpResponseBase, patients: Iterable[str]) -> bytes:
    """One line of JSON (the stored headers, and the patients the answer shows), then the
    body as it was sent: a hit parses the short line only, never the body."""
    render = getattr(response, "render", None)
    if render is not None:
        render()
    body: bytes = getattr(response, "content", b"")
    headers = {name: response[name] for name in _STORED_HEADERS if response.has_header(name)}
    head = {"headers": headers, "patients": sorted(patients)}
    return json.dumps(head).encode() + b"\n" + body
