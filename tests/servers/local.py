"""What every fixture HTTP server shares: a request handler base (keep-alive, quiet, no Nagle delay, JSON
replies), a threaded server on 127.0.0.1 (a free port) in a daemon thread, its `/v1` URL, and `with` to start
and stop it."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 (keep-alive), quiet, and without Nagle's delay: headers and body go out in two writes, and
    Nagle + delayed ACK would add about 40 ms to each reply."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def reply(self, status: int, payload, headers: dict | None = None, kind: str = "application/json") -> None:
        """Send `payload` (bytes as they are, anything else as JSON) with `headers`."""
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default 5 resets connections when a client opens 32 at once

    def handle_error(self, request, client_address):  # a client that gave up on a slow reply, a killed proxy
        pass


class LocalServer:
    def listen(self, handler: type[Handler]) -> None:
        """Bind `handler` to a free port; `with` serves it."""
        self.httpd = _Server(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
