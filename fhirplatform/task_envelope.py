"""The signed context envelope every Celery message carries, and the task class that
seals it on the way out and checks it before running.

The envelope names the task, its tenant schema, the client and request id that caused
it, and a digest of its arguments; it is signed with a key derived from SECRET_KEY
(django.core.signing, own salt). A worker runs a message only if the envelope verifies
and matches the message: one injected into the broker without it, or with its tenant,
task or arguments altered, is logged and refused (EnvelopeRefused), never run. So a
message cannot pick a tenant: only code holding SECRET_KEY can.
"""

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from celery import Task
from django.core import signing

from fhirplatform.context import context_begin, context_end, context_update, current_context

logger = logging.getLogger(__name__)

ENVELOPE_HEADER = "fhirplatform_envelope"
_ENVELOPE_SALT = "fhirplatform.celery.envelope"


class TenantMissing(RuntimeError):
    """A tenant task was called without a tenant schema, or with an unknown one."""


class EnvelopeRefused(TenantMissing):
    """A task message whose context envelope is missing, forged or does not match it.

    A TenantMissing: such a message has no tenant the platform vouches for."""


@dataclass(frozen=True)
class Envelope:
    tenant_schema: str
    client: str
    request_id: str


def _arguments_digest(args: Any, kwargs: Any) -> str:
    # The arguments as JSON carries them: a tuple sent is a list received.
    canonical = json.dumps(
        [list(args or ()), dict(kwargs or {})],
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _tenant_of(kwargs: Any) -> Any:
    return (kwargs or {}).get("tenant_schema") or ""


def envelope_seal(*, task_name: str, args: Any, kwargs: Any) -> str:
    """The signed envelope for a message about to be sent from this context."""
    context = current_context()
    return signing.dumps(
        {
            "task": task_name,
            "tenant": _tenant_of(kwargs),
            "client": context.client if context else "",
            "request_id": context.request_id if context else "",
            "arguments": _arguments_digest(args, kwargs),
        },
        salt=_ENVELOPE_SALT,
    )


def envelope_open(*, sealed: object, task_name: str, args: Any, kwargs: Any) -> Envelope:
    """The verified envelope of a received message, or EnvelopeRefused."""
    if not isinstance(sealed, str) or not sealed:
        raise EnvelopeRefused(f"{task_name}: the message has no signed context envelope")
    try:
        payload = signing.loads(sealed, salt=_ENVELOPE_SALT)
    except signing.BadSignature:
        raise EnvelopeRefused(f"{task_name}: the context envelope's signature is wrong") from None
    expected = {
        "task": task_name,
        "tenant": _tenant_of(kwargs),
        "arguments": _arguments_digest(args, kwargs),
    }
    altered = sorted(name for name, value in expected.items() if payload.get(name) != value)
    if altered:
        raise EnvelopeRefused(
            f"{task_name}: the message's {', '.join(altered)} does not match its signed envelope"
        )
    return Envelope(
        tenant_schema=str(expected["tenant"]),
        client=str(payload.get("client") or ""),
        request_id=str(payload.get("request_id") or ""),
    )


class SignedTask(Task):  # type: ignore[misc]
    """The base of every task of the app: sealed when sent, run only if the seal holds."""

    def _sealed_headers(self, args: Any, kwargs: Any, options: dict[str, Any]) -> dict[str, Any]:
        headers = dict(options.pop("headers", None) or {})
        headers[ENVELOPE_HEADER] = envelope_seal(task_name=self.name, args=args, kwargs=kwargs)
        return headers

    # Every option passes through untouched, so the overrides take them as **options.
    def apply_async(  # type: ignore[override]
        self, args: Any = None, kwargs: Any = None, **options: Any
    ) -> Any:
        headers = self._sealed_headers(args, kwargs, options)
        return super().apply_async(args, kwargs, headers=headers, **options)

    def apply(  # type: ignore[override]
        self, args: Any = None, kwargs: Any = None, **options: Any
    ) -> Any:
        # Eager runs go through the same check as the worker's, so tests see the real thing.
        headers = self._sealed_headers(args, kwargs, options)
        return super().apply(args, kwargs, headers=headers, **options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if request.called_directly:  # a plain function call in this process: no message
            return self.run_verified(None, args, kwargs)
        sealed = getattr(request, ENVELOPE_HEADER, None) or (request.headers or {}).get(
            ENVELOPE_HEADER
        )
        try:
            envelope = envelope_open(sealed=sealed, task_name=self.name, args=args, kwargs=kwargs)
        except EnvelopeRefused as refused:
            logger.error(
                "task message refused",
                extra={"task": self.name, "task_id": request.id, "reason": str(refused)},
            )
            raise
        if current_context() is not None:  # eager, inside a request: its context stands
            return self.run_verified(envelope, args, kwargs)
        # In a worker the log lines of the task carry the request that caused it.
        context_begin(request_id=envelope.request_id or str(request.id))
        context_update(tenant="", client=envelope.client)
        try:
            return self.run_verified(envelope, args, kwargs)
        finally:
            context_end()

    def run_verified(self, envelope: Envelope | None, args: Any, kwargs: Any) -> Any:
        """Run the task body; `envelope` is None only for a direct call."""
        return super().__call__(*args, **kwargs)
