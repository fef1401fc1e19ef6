"""What operators see: the "Cache and consent" admin page, the rule admin, /metrics."""

import re

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from fhirplatform.cache.generations import gen_patient, generations_changed
from fhirplatform.cache.keys import Namespace
from fhirplatform.cache.models import CacheRule
from fhirplatform.cache.stats import cache_stats, cache_stats_denial
from tests.cache.conftest import fill, key_for, lookup

OVERVIEW = "/admin/cache/cacherule/overview/"


def _browser(user: User) -> Client:
    browser = Client()
    browser.force_login(user)
    return browser


@pytest.fixture
def operator(db) -> Client:
    """Staff, allowed to view cache rules (not a superuser)."""
    user = User.objects.create_user("cache-operator", password="pw-x", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="cache"))
    return _browser(user)


@pytest.fixture
def superuser(db) -> Client:
    return _browser(User.objects.create_superuser("cache-root", password="pw-root"))


def test_the_overview_shows_every_tenant_with_its_statistics_and_rules(operator, cast):
    schema = cast.tenant_a.schema_name
    key = key_for(schema, request="GET /Patient/overview")
    fill(schema, key, depends_on=[gen_patient("overview")])
    lookup(schema, key)
    cache_stats_denial(tenant_schema=schema)
    CacheRule.objects.create(tenant=cast.tenant_b, resource_type="Observation", ttl_seconds=9)

    page = operator.get(OVERVIEW)
    assert page.status_code == 200
    html = page.content.decode()
    assert "Cache and consent" in html and "Hit ratio" in html and "Semantic hit ratio" in html
    assert cast.tenant_a.slug in html and cast.tenant_b.slug in html
    assert "Observation</a>:" in html and "9 s" in html
    rows = {row.tenant.slug: row for row in page.context["rows"]}
    stats = rows[cast.tenant_a.slug].stats
    assert stats is not None and stats.counters["denials"] >= 1 and stats.entries >= 1
    assert [rule.resource_type for rule in rows[cast.tenant_b.slug].rules] == ["Observation"]


def test_the_overview_says_so_when_redis_is_unreachable(operator, cast, redis_down):
    page = operator.get(OVERVIEW)
    assert page.status_code == 200
    assert b"Redis unreachable" in page.content


def test_the_overview_is_for_operators_only(db):
    assert Client().get(OVERVIEW).status_code == 302  # to the admin login
    staff = User.objects.create_user("cache-staff-no-perm", password="pw-y", is_staff=True)
    assert _browser(staff).get(OVERVIEW).status_code == 403


def test_the_rule_admin_lists_by_tenant_and_refuses_stale_phi(superuser, cast):
    listing = superuser.get(f"/admin/cache/cacherule/?tenant__id__exact={cast.tenant_a.pk}")
    assert listing.status_code == 200 and OVERVIEW.encode() in listing.content

    refused = superuser.post(
        "/admin/cache/cacherule/add/",
        {"tenant": cast.tenant_a.pk, "resource_type": "Observation", "ttl_seconds": 60,
         "swr_seconds": 30},
    )  # fmt: skip
    assert refused.status_code == 200
    assert "only reference-data types may be served stale" in refused.content.decode()
    assert not CacheRule.objects.filter(tenant=cast.tenant_a).exists()

    added = superuser.post(
        "/admin/cache/cacherule/add/",
        {"tenant": cast.tenant_a.pk, "resource_type": "Organization", "ttl_seconds": 600,
         "swr_seconds": 60},
    )  # fmt: skip
    assert added.status_code == 302
    rule = CacheRule.objects.get(tenant=cast.tenant_a, resource_type="Organization")
    assert (rule.ttl_seconds, rule.swr_seconds) == (600, 60)

    changed = superuser.post(
        f"/admin/cache/cacherule/{rule.pk}/change/", {"ttl_seconds": 120, "swr_seconds": 0}
    )
    assert changed.status_code == 302
    rule.refresh_from_db()
    assert (rule.ttl_seconds, rule.swr_seconds, rule.resource_type) == (120, 0, "Organization")


def _sample(text: str, name: str, slug: str) -> float:
    match = re.search(rf'^{name}\{{tenant="{re.escape(slug)}"\}} (\S+)$', text, re.MULTILINE)
    assert match, f"no {name} series for {slug}"
    return float(match.group(1))


def test_metrics_show_the_per_tenant_series(db, cast):
    schema = cast.tenant_b.schema_name
    key = key_for(schema, request="GET /Patient/metrics")
    fill(schema, key)
    lookup(schema, key)
    semantic = key_for(schema, request="total of a search", namespace=Namespace.SEMANTIC)
    fill(schema, semantic, payload=b"3")  # a miss, then a fill
    lookup(schema, semantic)  # a hit
    cache_stats_denial(tenant_schema=schema)
    generations_changed(tenant_schema=schema, patients=["metrics"])
    denials = cache_stats(tenant_schema=schema)["denials"]

    text = Client().get("/metrics").content.decode()
    slug = cast.tenant_b.slug
    assert _sample(text, "fhirplatform_cache_hits_total", slug) >= 1
    assert _sample(text, "fhirplatform_cache_misses_total", slug) >= 1
    assert _sample(text, "fhirplatform_cache_fills_total", slug) >= 1
    assert _sample(text, "fhirplatform_cache_invalidations_total", slug) >= 1
    assert _sample(text, "fhirplatform_cache_consent_denials_total", slug) == denials
    assert _sample(text, "fhirplatform_cache_entries", slug) >= 1
    assert 0 <= _sample(text, "fhirplatform_cache_hit_ratio", slug) <= 1
    assert _sample(text, "fhirplatform_cache_semantic_hits_total", slug) >= 1
    assert _sample(text, "fhirplatform_cache_semantic_misses_total", slug) >= 1
    assert _sample(text, "fhirplatform_cache_semantic_fills_total", slug) >= 1
    assert 0 < _sample(text, "fhirplatform_cache_semantic_hit_ratio", slug) < 1
    assert f'tenant="{cast.tenant_a.slug}"' in text
