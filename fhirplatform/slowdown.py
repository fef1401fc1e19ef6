"""Connections whose next request the server reads late: a client that keeps sending
while it is refused.

The refusal gate (fhirplatform/fhir/gate.py) asks for it when it answers a request that a
refusal already known in this process refuses: the client did not wait for the
Retry-After it was given. The platform's gunicorn worker (fhirplatform/gunicorn_worker.py)
then puts the kept-alive connection back among those it reads only once the delay has
passed, without holding a thread: an unpaced flood on kept-alive connections is slowed to
a few requests a second per connection, and the CPU it would take goes to other clients.

The delay never outlasts the refusal (the gate bounds it by the refusal's certainty), so a
request that would be admitted is never made to wait. No Django here: gunicorn imports
its worker before the application.
"""

import socket
import threading

_enabled = False
_lock = threading.Lock()
_delays: dict[socket.socket, float] = {}


def slowdown_enable() -> None:
    """Called by a worker that honours the delays; without one, nothing is recorded."""
    global _enabled
    _enabled = True


def connection_slow_down(environ: dict[str, object], seconds: float) -> None:
    """Read the next request on this request's connection `seconds` from now at the
    earliest (the longest asked for since the connection was last read wins)."""
    sock = environ.get("gunicorn.socket")
    if not _enabled or seconds <= 0 or not isinstance(sock, socket.socket):
        return
    with _lock:
        _delays[sock] = max(seconds, _delays.get(sock, 0.0))


def connection_delay_take(sock: socket.socket) -> float:
    """The delay asked for this connection's next read, forgotten once taken. The worker
    asks after every request: with nothing asked for, no lock is taken (a delay for this
    connection is always asked for before its request finishes)."""
    if not _delays:
        return 0.0
    with _lock:
        return _delays.pop(sock, 0.0)
