"""The operators' consent policy pages, reached from a tenant's change page in the admin:
the policy in force with its edit form, every version with what it changed, and the
policy tests (add, delete, run).

Views only parse, call a service or selector, and render; each checks the consent
model permission of what it does, as the admin's own pages check theirs.
"""

from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from audit.governance import governance_recorded
from consent.forms import PolicyForm, PolicyTestForm, policy_form_initial, service_errors_add
from consent.governance import policy_tests_run
from consent.selectors import policy_page
from consent.services import (
    ConsentPolicyError,
    policy_test_create,
    policy_test_delete,
    policy_update,
)
from tenants.models import Tenant

# What each action needs; a superuser holds them all.
VIEW_POLICY = "consent.view_consentpolicyversion"
CHANGE_POLICY = "consent.add_consentpolicyversion"  # a change is a new version
VIEW_TESTS = "consent.view_policytest"  # and run them: running writes nothing
ADD_TEST = "consent.add_policytest"
DELETE_TEST = "consent.delete_policytest"

URL_POLICY = "tenants_tenant_consent_policy"


def consent_policy_link(tenant: Tenant) -> str:
    """The tenant change page's link to its consent policy page."""
    if not tenant.pk:
        return "-"
    url = reverse(f"admin:{URL_POLICY}", args=[tenant.pk])
    return format_html('<a href="{}">Consent policy and policy tests</a>', url)


def _require(request: HttpRequest, permission: str) -> None:
    if not request.user.has_perm(permission):
        raise PermissionDenied


class ConsentPolicyViews:
    def __init__(self, admin_site: admin.AdminSite) -> None:
        self.admin_site = admin_site

    def urls(self) -> list[URLPattern]:
        def view(function: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
            return self.admin_site.admin_view(function)

        return [
            path(
                "<int:tenant_id>/consent/",
                view(require_http_methods(["GET", "HEAD", "POST"])(self.policy)),
                name=URL_POLICY,
            ),
            path(
                "<int:tenant_id>/consent/tests/",
                view(require_POST(self.test_add)),
                name="tenants_tenant_consent_test_add",
            ),
            path(
                "<int:tenant_id>/consent/tests/<int:test_id>/delete/",
                view(require_POST(self.test_delete)),
                name="tenants_tenant_consent_test_delete",
            ),
            path(
                "<int:tenant_id>/consent/run/",
                view(require_GET(self.tests_run)),
                name="tenants_tenant_consent_tests_run",
            ),
        ]

    def _context(self, request: HttpRequest, tenant: Tenant, title: str) -> dict[str, Any]:
        return {
            **self.admin_site.each_context(request),
            "title": title,
            "tenant": tenant,
            "opts": Tenant._meta,
            "policy_url": reverse(f"admin:{URL_POLICY}", args=[tenant.pk]),
        }

    def _policy_page(
        self,
        request: HttpRequest,
        tenant: Tenant,
        *,
        form: PolicyForm | None = None,
        test_form: PolicyTestForm | None = None,
    ) -> TemplateResponse:
        page = policy_page(tenant=tenant)
        user = request.user
        context = {
            **self._context(request, tenant, f"Consent policy of {tenant.slug}"),
            "page": page,
            "form": form or PolicyForm(initial=policy_form_initial(page.policy)),
            "test_form": test_form or PolicyTestForm(),
            "can_change": user.has_perm(CHANGE_POLICY),
            "can_view_tests": user.has_perm(VIEW_TESTS),
            "can_add_test": user.has_perm(ADD_TEST),
            "can_delete_test": user.has_perm(DELETE_TEST),
        }
        return TemplateResponse(request, "admin/consent/policy.html", context)

    @staticmethod
    def _tenant(tenant_id: int) -> Tenant:
        return get_object_or_404(Tenant, pk=tenant_id)

    def policy(self, request: HttpRequest, tenant_id: int) -> HttpResponse:
        """The policy page; a POST saves the edit form as a new version."""
        _require(request, VIEW_POLICY)
        tenant = self._tenant(tenant_id)
        if request.method != "POST":
            return self._policy_page(request, tenant)
        _require(request, CHANGE_POLICY)
        form = PolicyForm(request.POST)
        if form.is_valid():
            try:
                with transaction.atomic():  # the change and its audit event, or neither
                    saved = policy_update(
                        tenant=tenant,
                        by=request.user.get_username(),
                        note=form.cleaned_data["note"],
                        **form.policy_values(),
                    )
                    governance_recorded(
                        request=request,
                        what="consent.policy",
                        object_id=str(saved.version),
                        action="changed",
                        tenant=tenant.slug,
                        detail=form.cleaned_data["note"],
                    )
            except ConsentPolicyError as exc:
                service_errors_add(form, exc)
            else:
                messages.success(request, f"Saved as consent policy version {saved.version}.")
                return HttpResponseRedirect(request.path)
        return self._policy_page(request, tenant, form=form)

    def test_add(self, request: HttpRequest, tenant_id: int) -> HttpResponse:
        _require(request, ADD_TEST)
        tenant = self._tenant(tenant_id)
        form = PolicyTestForm(request.POST)
        if form.is_valid():
            try:
                with transaction.atomic():
                    test = policy_test_create(
                        tenant=tenant, by=request.user.get_username(), **form.cleaned_data
                    )
                    governance_recorded(
                        request=request,
                        what="consent.policytest",
                        object_id=str(test.pk),
                        action="added",
                        tenant=tenant.slug,
                        detail=test.name,
                    )
            except ConsentPolicyError as exc:
                service_errors_add(form, exc)
            else:
                messages.success(request, f"Policy test '{form.cleaned_data['name']}' added.")
                return HttpResponseRedirect(reverse(f"admin:{URL_POLICY}", args=[tenant.pk]))
        _require(request, VIEW_POLICY)
        return self._policy_page(request, tenant, test_form=form)

    def test_delete(self, request: HttpRequest, tenant_id: int, test_id: int) -> HttpResponse:
        _require(request, DELETE_TEST)
        tenant = self._tenant(tenant_id)
        try:
            with transaction.atomic():
                policy_test_delete(tenant=tenant, test_id=test_id)
                governance_recorded(
                    request=request,
                    what="consent.policytest",
                    object_id=str(test_id),
                    action="deleted",
                    tenant=tenant.slug,
                )
        except ConsentPolicyError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, "Policy test deleted.")
        return HttpResponseRedirect(reverse(f"admin:{URL_POLICY}", args=[tenant.pk]))

    def tests_run(self, request: HttpRequest, tenant_id: int) -> HttpResponse:
        _require(request, VIEW_TESTS)
        tenant = self._tenant(tenant_id)
        run = policy_tests_run(tenant=tenant)
        context = {
            **self._context(request, tenant, f"Policy tests of {tenant.slug}"),
            "run": run,
        }
        return TemplateResponse(request, "admin/consent/policy_run.html", context)
