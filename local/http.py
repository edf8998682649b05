"""The base of the local stack's loopback HTTP servers (API front, Lambda Invoke API)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class LoopbackHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive, quiet, and without Nagle's delay (headers and body are separate writes)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *_args: Any) -> None:
        """Keep the console for the app's own output."""
        return

    def send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        """One complete response; hop-by-hop and length headers are set here."""
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve(handler: type[BaseHTTPRequestHandler], port: int = 0, name: str = "http") -> ThreadingHTTPServer:
    """Serve ``handler`` on 127.0.0.1 from a daemon thread; returns the server (``shutdown()`` to stop)."""
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True, name=name).start()
    return server
