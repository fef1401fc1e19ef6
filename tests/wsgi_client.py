"""Requests sent to the platform's WSGI application itself (fhirplatform/wsgi.py), which
Django's test Client bypasses: it calls Django's handler, inside the refusal gate.

Like the test Client, it keeps Django from closing the test's database connection (and
its transaction) when a request starts and finishes."""

import json
from dataclasses import dataclass
from typing import Any

from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.test import RequestFactory

from fhirplatform.wsgi import application


@dataclass(frozen=True)
class WsgiAnswer:
    status_code: int
    headers: dict[str, str]
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)


def wsgi_get(path: str, headers: dict[str, str], app: Any = application) -> WsgiAnswer:
    environ = RequestFactory().get(path, headers=headers).environ
    started: list[tuple[str, list[tuple[str, str]]]] = []
    for signal in (request_started, request_finished):
        signal.disconnect(close_old_connections)
    try:
        chunks = app(environ, lambda status, head, exc_info=None: started.append((status, head)))
        try:
            content = b"".join(chunks)
        finally:
            getattr(chunks, "close", lambda: None)()
    finally:
        for signal in (request_started, request_finished):
            signal.connect(close_old_connections)
    status, head = started[0]
    return WsgiAnswer(int(status.split()[0]), dict(head), content)
