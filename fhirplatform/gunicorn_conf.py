"""gunicorn settings of the platform, used as `--config python:fhirplatform.gunicorn_conf`.

gunicorn answers a request it cannot parse (a request line over `limit_request_line`, too
many or too large header fields, bytes outside printable ASCII in the target, a bad method
or HTTP version) itself, before Django sees it, with an HTML page. Every error body of
the platform is an OperationOutcome, so those answers are one too, with an X-Request-ID
like every other response. gunicorn has no setting or hook for these pages: its worker
chooses the status, reason and message and calls `gunicorn.util.write_error`, which this
module replaces when gunicorn loads it (the choice of status stays gunicorn's).
"""

import json
import socket

from gunicorn import util

from fhirplatform.context import request_id_from_header
from fhirplatform.errors import FHIR_JSON, Issue, IssueCode, operation_outcome

_ISSUE_CODES = {
    400: IssueCode.STRUCTURE,
    403: IssueCode.FORBIDDEN,
    414: IssueCode.TOO_LONG,
    417: IssueCode.NOT_SUPPORTED,
    431: IssueCode.TOO_LONG,
    501: IssueCode.NOT_SUPPORTED,
}
# gunicorn's message may quote the whole request line; enough of it to find the fault.
_MESSAGE_CHARS = 200


def outcome_error_bytes(status: int, reason: str, message: str) -> bytes:
    """The raw HTTP response for one of gunicorn's own errors, as an OperationOutcome."""
    if status >= 500:
        code = IssueCode.EXCEPTION
        diagnostics = "Internal error; quote the X-Request-ID when reporting it"
    else:
        code = _ISSUE_CODES.get(status, IssueCode.INVALID)
        diagnostics = f"{reason}: {message[:_MESSAGE_CHARS]}" if message else reason
    # ensure_ascii: the message echoes request bytes, and the head is latin-1.
    body = json.dumps(operation_outcome(Issue(code=code, diagnostics=diagnostics))).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Connection: close\r\n"
        f"Content-Type: {FHIR_JSON}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-Request-ID: {request_id_from_header(None)}\r\n"
        "\r\n"
    )
    return head.encode("latin-1") + body


def outcome_write_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    util.write_nonblock(sock, outcome_error_bytes(status_int, reason, mesg))


util.write_error = outcome_write_error

# gunicorn's threaded worker, which reads a flooding client's next request late
# (fhirplatform/gunicorn_worker.py); used whatever --threads says.
worker_class = "fhirplatform.gunicorn_worker.ThreadWorker"

# An idle kept-alive connection is closed after this many seconds. Longer than a bulk
# export's Retry-After (EXPORT_POLL_SECONDS, 2): a client polling on time reuses its
# connection instead of racing the server's close of it (gunicorn's default is 2).
keepalive = 5
