"""OAuth 2.0 endpoints: token (client credentials) and revocation (RFC 7009).

These are OAuth, not FHIR: refusals are RFC 6749 JSON error bodies. Only the
platform's own operational answers (429 throttled, 503 unavailable) are
OperationOutcomes, because OAuth has no vocabulary for them.
"""

import logging
from typing import Any

import redis
from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent
from django.http import HttpRequest, HttpResponse, JsonResponse, QueryDict
from django.views.decorators.csrf import csrf_exempt
from django_ratelimit.core import get_usage

from audit.token_requests import token_request_audited
from fhirplatform.errors import FhirError, IssueCode, fhir_error_json
from tenants.assertions import assertion_client_id, assertion_verify
from tenants.models import ApiClient
from tenants.oauth import (
    CLIENT_ASSERTION_TYPE_JWT,
    GRANT_TYPE_CLIENT_CREDENTIALS,
    MAX_CLIENT_ID_LENGTH,
    AuthMethod,
    ClientCredentials,
    OAuthError,
    OAuthErrorCode,
    TokenLimitReason,
    TokenServiceUnavailable,
    basic_credentials_parse,
    client_authenticate_secret,
    oauth_text_check,
    token_for_client,
    token_request_issue,
)
from tenants.selectors import fhir_base_url, tenant_fhir_base, token_endpoint_url
from tenants.services import token_revoke

logger = logging.getLogger(__name__)

FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"
# Far above any real value (every scope of every type, an 8 KiB assertion), far below
# what would make parsing them costly.
MAX_PARAMETER_CHARS = 16384
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class _Throttled(Exception):
    def __init__(self, reason: TokenLimitReason, retry_after: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def _oauth_error_response(error: OAuthError, *, basic: bool) -> JsonResponse:
    response = JsonResponse(error.body(), status=error.status, headers=_NO_STORE)
    if error.status == 401 and basic:
        response["WWW-Authenticate"] = 'Basic realm="fhirplatform"'
    return response


def _form(request: HttpRequest) -> QueryDict:
    try:
        # An empty body carries no parameters, whatever its (often absent) Content-Type says.
        if request.body and request.content_type != FORM_MEDIA_TYPE:
            raise OAuthError(
                OAuthErrorCode.INVALID_REQUEST, f"Content-Type must be {FORM_MEDIA_TYPE}"
            )
        if request.GET:
            raise OAuthError(
                OAuthErrorCode.INVALID_REQUEST, "Send parameters in the body, not the URL"
            )
        form = request.POST
    except (RequestDataTooBig, TooManyFieldsSent):
        raise OAuthError(OAuthErrorCode.INVALID_REQUEST, "The request body is too large") from None
    repeated = sorted(name for name, values in form.lists() if len(values) > 1)
    if repeated:
        raise OAuthError(
            OAuthErrorCode.INVALID_REQUEST,
            f"Parameter(s) sent more than once: {', '.join(repeated)}",
        )
    for name, values in form.lists():
        oauth_text_check(name, what="A parameter name")
        for value in values:
            oauth_text_check(value, what=f"Parameter {name}")
            if len(value) > MAX_PARAMETER_CHARS:
                raise OAuthError(OAuthErrorCode.INVALID_REQUEST, f"Parameter {name} is too long")
    return form


def _credentials(request: HttpRequest, form: QueryDict) -> ClientCredentials:
    """Which client authentication the request uses; exactly one method is allowed."""
    authorization = request.headers.get("Authorization", "")
    assertion = form.get("client_assertion", "")
    if form.get("client_secret"):
        raise OAuthError(
            OAuthErrorCode.INVALID_REQUEST,
            "client_secret_post is not supported: use HTTP Basic or private_key_jwt",
        )
    if authorization and assertion:
        raise OAuthError(
            OAuthErrorCode.INVALID_REQUEST, "Use one client authentication method, not two"
        )
    if authorization:
        client_id, secret = basic_credentials_parse(authorization)
        return ClientCredentials(AuthMethod.CLIENT_SECRET_BASIC, client_id, secret=secret)
    if assertion:
        if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE_JWT:
            raise OAuthError(
                OAuthErrorCode.INVALID_REQUEST,
                f"client_assertion_type must be {CLIENT_ASSERTION_TYPE_JWT}",
            )
        client_id = assertion_client_id(assertion)
        if form.get("client_id") and form["client_id"] != client_id:
            raise OAuthError(
                OAuthErrorCode.INVALID_CLIENT, "client_id does not match the assertion"
            )
        return ClientCredentials(AuthMethod.PRIVATE_KEY_JWT, client_id, assertion=assertion)
    raise OAuthError(
        OAuthErrorCode.INVALID_CLIENT,
        "Client authentication is required (HTTP Basic or private_key_jwt client_assertion)",
    )


def _rate_limit(
    request: HttpRequest, group: str, value: str, rate: str, reason: TokenLimitReason
) -> None:
    try:
        usage = get_usage(
            request, group=group, key=lambda _group, _request: value, rate=rate, increment=True
        )
    except redis.RedisError as exc:
        raise TokenServiceUnavailable("rate limit store is unreachable") from exc
    if usage is None or not usage["should_limit"]:
        return
    if usage["time_left"] < 0:  # django-ratelimit could not read its counter
        raise TokenServiceUnavailable("rate limit store is unreachable")
    raise _Throttled(reason, max(int(usage["time_left"]), 1))


def _token_rate_limit(request: HttpRequest, client_id: str | None) -> None:
    """Brute force guard: every token request counts against its IP and its claimed client."""
    _rate_limit(
        request,
        "oauth-token-ip",
        request.META.get("REMOTE_ADDR", ""),
        settings.TOKEN_RATE_LIMIT_PER_IP,
        TokenLimitReason.IP,
    )
    if client_id:
        _rate_limit(
            request,
            "oauth-token-client",
            client_id[:MAX_CLIENT_ID_LENGTH],
            settings.TOKEN_RATE_LIMIT_PER_CLIENT,
            TokenLimitReason.CLIENT,
        )


def _authenticate(credentials: ClientCredentials, *, token_endpoint: str) -> ApiClient:
    if credentials.method == AuthMethod.CLIENT_SECRET_BASIC:
        return client_authenticate_secret(
            client_id=credentials.client_id, secret=credentials.secret
        )
    return assertion_verify(assertion=credentials.assertion, audience=token_endpoint)


def _guarded(handler: Any) -> Any:
    """Render the endpoint's refusals: OAuth errors, throttling, and failing closed; and
    record every request in the audit trail (audit/token_requests.py)."""

    def view(request: HttpRequest, **kwargs: str) -> HttpResponse:
        return token_request_audited(request, _answered(request, **kwargs))

    def _answered(request: HttpRequest, **kwargs: str) -> HttpResponse:
        if request.method != "POST":
            response = JsonResponse(
                OAuthError(OAuthErrorCode.INVALID_REQUEST, "Use POST").body(), status=405
            )
            response["Allow"] = "POST"
            return response
        basic = "Authorization" in request.headers
        try:
            return handler(request, **kwargs)  # type: ignore[no-any-return]
        except OAuthError as error:
            logger.info(
                "oauth request refused", extra={"error": str(error.error), "path": request.path}
            )
            return _oauth_error_response(error, basic=basic)
        except _Throttled as throttled:
            throttled_error = FhirError(
                429,
                IssueCode.THROTTLED,
                "Too many token requests; retry later",
                reason=str(throttled.reason),
                headers={"Retry-After": str(throttled.retry_after), **_NO_STORE},
            )
            return fhir_error_json(throttled_error)
        except TokenServiceUnavailable as exc:
            logger.error("token endpoint unavailable", extra={"error": str(exc)})
            return fhir_error_json(
                FhirError(
                    503,
                    IssueCode.TRANSIENT,
                    "The token service is temporarily unavailable",
                    headers={"Retry-After": "5", **_NO_STORE},
                )
            )

    return csrf_exempt(view)


def _resource(form: QueryDict, tenant: str | None) -> str:
    """The FHIR base the token is for: `resource` (or `aud`); at a tenant's own endpoint,
    that tenant's base, which `resource` may repeat but not contradict."""
    asked = form.get("resource") or form.get("aud", "")
    if tenant is None:
        return asked
    base = fhir_base_url(tenant)
    if asked and asked.rstrip("/") != base:
        raise OAuthError(
            OAuthErrorCode.INVALID_TARGET, "This token endpoint issues tokens for its tenant only"
        )
    return base


@_guarded
def token(request: HttpRequest, tenant: str | None = None) -> HttpResponse:
    """POST /oauth/token, or a tenant's own POST /oauth/<tenant>/token: client credentials
    grant, see docs/auth.md for the tenant rule."""
    form = _form(request)
    try:
        credentials = _credentials(request, form)
    except OAuthError:
        _token_rate_limit(request, None)
        raise
    _token_rate_limit(request, credentials.client_id)
    if form.get("grant_type") != GRANT_TYPE_CLIENT_CREDENTIALS:
        raise OAuthError(
            OAuthErrorCode.UNSUPPORTED_GRANT_TYPE, "grant_type must be client_credentials"
        )
    client = request.audit_client = _authenticate(  # type: ignore[attr-defined]
        credentials, token_endpoint=token_endpoint_url(tenant)
    )
    issued = request.audit_issued = token_request_issue(  # type: ignore[attr-defined]
        client=client,
        auth_method=credentials.method,
        resource=_resource(form, tenant),
        scope=form.get("scope", ""),
        purpose=form.get("purpose_of_use", ""),
    )
    body = {
        "access_token": issued.access_token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "scope": issued.scope,
        "tenant": issued.tenant.slug,
        "aud": tenant_fhir_base(issued.tenant),
    }
    if issued.purpose:
        body["purpose_of_use"] = issued.purpose
    return JsonResponse(body, headers=_NO_STORE)


@_guarded
def revoke(request: HttpRequest) -> HttpResponse:
    """POST /oauth/revoke (RFC 7009): a client revokes one of its own access tokens."""
    form = _form(request)
    credentials = _credentials(request, form)
    _token_rate_limit(request, credentials.client_id)
    client = request.audit_client = _authenticate(  # type: ignore[attr-defined]
        credentials, token_endpoint=token_endpoint_url()
    )
    record = token_for_client(client=client, token=form.get("token", ""))
    # RFC 7009: an unknown token, or another client's, is answered 200 all the same.
    if record is not None:
        token_revoke(token=record)
    return HttpResponse(status=200, headers=_NO_STORE)
