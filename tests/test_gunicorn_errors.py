"""Requests gunicorn refuses before Django sees them get an OperationOutcome too
(fhirplatform/gunicorn_conf.py), sent over raw sockets to the real server."""

import json
import socket
from urllib.parse import urlparse

import pytest

pytestmark = pytest.mark.live


def _raw(base: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are; the status, the headers (lower-cased names) and the body."""
    url = urlparse(base)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def _get(target: bytes, *header_lines: bytes, version: bytes = b"HTTP/1.1") -> bytes:
    lines = [b"GET " + target + b" " + version, b"Host: 127.0.0.1", b"Connection: close"]
    return b"\r\n".join([*lines, *header_lines]) + b"\r\n\r\n"


REFUSED = [
    ("request line over the limit", _get(b"/fhir/provider-a/Patient?name=" + b"a" * 5000), 414),
    ("raw non-ASCII path", _get("/fhir/provider-a/Patient/é".encode()), 400),
    ("raw control byte in the path", _get(b"/fhir/provider-a/\x01"), 400),
    (
        "header field over the limit",
        _get(b"/fhir/provider-a/metadata", b"X-Big: " + b"a" * 9000),
        431,
    ),
    (
        "too many header fields",
        _get(b"/fhir/provider-a/metadata", *(b"X-Field-%d: 1" % i for i in range(120))),
        431,
    ),
    ("unknown HTTP version", _get(b"/fhir/provider-a/metadata", version=b"HTTP/9.9"), 400),
    ("lower-case method", b"get /fhir/provider-a/metadata HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("no request target", b"GET  HTTP/1.1\r\nHost: x\r\n\r\n", 400),
]


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [case[1:] for case in REFUSED],
    ids=[case[0] for case in REFUSED],
)
def test_gunicorn_refusals_are_operation_outcomes(live_server_url, request_bytes, status):
    got, headers, body = _raw(live_server_url, request_bytes)
    assert got == status, body
    assert headers["content-type"] == "application/fhir+json"
    assert len(headers["x-request-id"]) == 32
    assert int(headers["content-length"]) == len(body)
    outcome = json.loads(body)
    assert outcome["resourceType"] == "OperationOutcome"
    issue = outcome["issue"][0]
    assert issue["severity"] == "error"
    assert issue["code"] == ("too-long" if status in (414, 431) else "structure")
    assert len(issue["diagnostics"]) < 300  # the echoed request line is cut short


def test_requests_gunicorn_accepts_still_reach_the_platform(live_server_url):
    status, headers, body = _raw(live_server_url, _get(b"/fhir/provider-a/metadata"))
    assert status == 200
    assert json.loads(body)["resourceType"] == "CapabilityStatement"
    assert headers["x-request-id"]
