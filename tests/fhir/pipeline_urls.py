"""A test-only URLconf: a FHIR create endpoint that runs the real pipeline and waits until
the test lets it finish, so "the first request is still in flight" is deterministic; its
body can also make the handler fail (`"fail": 1`, a FhirError 500), crash (`"crash": 1`)
or raise Django's own Http404 (`"missing": 1`)."""

import threading
import uuid
from typing import Any

from django.http import Http404
from django.urls import path
from rest_framework.request import Request
from rest_framework.response import Response

from fhirplatform.errors import FhirError, IssueCode
from fhirplatform.fhir.pipeline import Description, FhirView
from fhirplatform.limits.codes import EndpointClass
from tenants.scopes import Interaction


class GatedCreate(FhirView):
    gate = threading.Event()
    entered = threading.Event()
    calls: list[str] = []

    def describe(self, request: Request, **kwargs: Any) -> Description:
        return Description(Interaction.CREATE, "Patient", EndpointClass.WRITE, 1)

    def post(self, request: Request, tenant: str) -> Response:
        self.calls.append(tenant)
        self.entered.set()
        assert self.gate.wait(timeout=20)
        if request.data.get("fail"):
            raise FhirError(500, IssueCode.EXCEPTION, "handler failed")
        if request.data.get("crash"):
            raise RuntimeError("unhandled handler error")
        if request.data.get("missing"):
            raise Http404("no such thing")
        logical_id = uuid.uuid4().hex
        body = dict(request.data, id=logical_id)
        return Response(body, status=201, headers={"Location": f"Patient/{logical_id}/_history/1"})


urlpatterns = [path("fhir/<slug:tenant>/Gated", GatedCreate.as_view())]

# The platform's own error pages: every FHIR error body is an OperationOutcome.
handler404 = "fhirplatform.fhir.http.handler404"
handler500 = "fhirplatform.fhir.http.handler500"
