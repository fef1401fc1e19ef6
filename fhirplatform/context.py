"""Per-request context (request id, tenant, client) carried into every log line."""

import logging
import os
import re
from contextvars import ContextVar
from dataclasses import dataclass, replace

_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")


@dataclass(frozen=True)
class RequestContext:
    request_id: str
    tenant: str = ""
    client: str = ""


_current: ContextVar[RequestContext | None] = ContextVar("request_context", default=None)


def request_id_from_header(value: str | None) -> str:
    """Echo a client's request id only when it is sane; otherwise mint one."""
    if value and _SANE_REQUEST_ID.match(value):
        return value
    return os.urandom(16).hex()  # uuid4's randomness, without building a UUID


def context_begin(*, request_id: str) -> RequestContext:
    context = RequestContext(request_id=request_id)
    _current.set(context)
    return context


def context_update(*, tenant: str, client: str) -> None:
    context = _current.get()
    if context is not None:
        _current.set(replace(context, tenant=tenant, client=client))


def context_end() -> None:
    _current.set(None)


def current_context() -> RequestContext | None:
    return _current.get()


class RequestContextLogFilter(logging.Filter):
    """Stamps request_id, tenant and client on every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _current.get() or RequestContext(request_id="")
        # A value passed explicitly in `extra=` wins over the ambient request context.
        for name in ("request_id", "tenant", "client"):
            if not getattr(record, name, None):
                setattr(record, name, getattr(context, name))
        return True
