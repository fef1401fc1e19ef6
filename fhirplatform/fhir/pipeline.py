"""The FHIR request pipeline every FHIR view runs through, in the order DESIGN.md fixes:

tenant from URL → token (tenant bound) → scope → rate limit and concurrency slot →
handler → headers. Errors anywhere become an OperationOutcome with the headers set.
"""

import logging
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404
from rest_framework.exceptions import APIException
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from fhirplatform.context import context_update
from fhirplatform.errors import FhirError, IssueCode
from fhirplatform.fhir.http import fhir_error_response
from fhirplatform.fhir.idempotency import IdempotencyClaim, IdempotentReplay, idempotency_begin
from fhirplatform.limits.costs import request_cost
from fhirplatform.limits.engine import Admission, EndpointClass, limit_admit
from fhirplatform.limits.refusals import refusal_charge
from fhirplatform.schemas import schema_activate
from tenants.scopes import Interaction, required_scope_text, scopes_allow
from tenants.selectors import tenant_for_url
from tenants.tokens import Caller, TenantMismatch, token_authenticate

logger = logging.getLogger(__name__)


class FhirView(APIView):
    """Base of every authenticated FHIR endpoint.

    Subclasses implement `describe(request, **kwargs)` returning the interaction,
    the resource type it touches, the endpoint class and the request's cost.
    """

    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []
    throttle_classes: list[Any] = []

    caller: Caller
    admission: Admission | None = None
    idempotency: IdempotencyClaim | None = None

    def describe(
        self, request: Request, **kwargs: Any
    ) -> tuple[Interaction, str, EndpointClass, int]:
        raise NotImplementedError

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        try:
            self.caller = token_authenticate(
                authorization=request.headers.get("Authorization"),
                url_tenant_slug=kwargs["tenant"],
            )
        except TenantMismatch as mismatch:
            # Charged to the caller's own quota, so the 404 carries the same headers a
            # missing resource's 404 does (finalize_response adds them): nothing tells
            # the two apart.
            self.caller = mismatch.caller
            self._admit(request, mismatch.caller, **kwargs)
            raise
        except FhirError as refused:
            refused.headers.update(refusal_charge(request=request))
            raise
        context_update(
            tenant=self.caller.tenant.slug,
            client=self.caller.client.client_id,
            actor=self.caller.actor,
        )
        self._admit(request, self.caller, **kwargs)
        self.idempotency = idempotency_begin(request=request, caller=self.caller)
        schema_activate(self.caller.tenant)

    def _admit(self, request: Request, caller: Caller, **kwargs: Any) -> None:
        """Scope check (a refusal never costs quota), then the rate limits; the admission
        is kept for finalize_response, which sends its headers and releases it."""
        interaction, resource_type, endpoint_class, cost = self.describe(request, **kwargs)
        if not scopes_allow(caller.scopes, resource_type, interaction):
            needed = required_scope_text(resource_type, interaction)
            refused = FhirError(
                403,
                IssueCode.FORBIDDEN,
                f"Missing scope {needed} for {interaction} on {resource_type}",
            )
            refused.headers.update(refusal_charge(request=request))
            raise refused
        self.admission = limit_admit(
            caller=caller,
            endpoint_class=endpoint_class,
            resource_type=resource_type,
            cost=request_cost(endpoint_class=endpoint_class, declared=cost),
        )

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, FhirError):
            return fhir_error_response(exc)
        if isinstance(exc, IdempotentReplay):
            return exc.response()  # type: ignore[return-value]
        if not isinstance(exc, APIException | Http404 | PermissionDenied):
            # Unhandled: Django answers 500 without finalize_response, so free the
            # in-flight slot and the idempotency key here.
            if self.idempotency is not None:
                self.idempotency.abandon()
                self.idempotency = None
            if self.admission is not None:
                self.admission.release(status=500)
                self.admission = None
        return super().handle_exception(exc)

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        response = super().finalize_response(request, response, *args, **kwargs)
        if self.idempotency is not None:
            self.idempotency.complete(response)
            self.idempotency = None
        if self.admission is not None:
            for name, value in self.admission.headers.items():
                response[name] = value
            self.admission.release(status=response.status_code)
            self.admission = None
        return response


class PublicFhirView(APIView):
    """Unauthenticated tenant endpoints (metadata, SMART configuration)."""

    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []
    throttle_classes: list[Any] = []

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        self.tenant = tenant_for_url(kwargs["tenant"])

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, FhirError):
            return fhir_error_response(exc)
        return super().handle_exception(exc)
