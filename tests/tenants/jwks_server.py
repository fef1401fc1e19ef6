"""A real HTTP server on loopback serving JWKS documents from a folder, for the jku tests.

Besides the folder's files it answers `/slow/<name>` after a delay, `/redirect/<name>` with
a 302 to `/<name>`, and `/unsized/<name>` without a Content-Length (the body ends when the
connection closes). It counts the requests each path received.
"""

import json
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass
class JwksServer:
    folder: Path
    base: str
    hits: Counter[str] = field(default_factory=Counter)
    delay_seconds: float = 3.0

    def url(self, name: str = "jwks.json") -> str:
        return f"{self.base}/{name}"

    def publish(self, document: Any, name: str = "jwks.json") -> str:
        """Serve `document` (JSON, or bytes as they are) at `name`; returns its URL."""
        raw = document if isinstance(document, bytes) else json.dumps(document).encode()
        (self.folder / name).write_bytes(raw)
        return self.url(name)


def _handler(server: JwksServer) -> type[SimpleHTTPRequestHandler]:
    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(server.folder), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the tests read `hits`, not a log."""

        def do_GET(self) -> None:
            server.hits[self.path] += 1
            kind, _, name = self.path.lstrip("/").partition("/")
            if kind == "slow":
                time.sleep(server.delay_seconds)
                self.path = f"/{name}"
            elif kind == "redirect":
                self.send_response(302)
                self.send_header("Location", f"/{name}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            elif kind == "unsized":
                body = (server.folder / name).read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True
                return
            super().do_GET()

    return Handler


@contextmanager
def jwks_server(folder: Path, *, tls: tuple[Path, Path] | None = None) -> Iterator[JwksServer]:
    """Serve `folder` on 127.0.0.1 (a free port) in a thread until the block ends; over
    https as `localhost` when `tls` gives a certificate and its key (PEM files)."""
    served = JwksServer(folder=folder, base="")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    httpd.daemon_threads = True
    port = httpd.server_address[1]
    served.base = f"http://127.0.0.1:{port}"
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        served.base = f"https://localhost:{port}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
