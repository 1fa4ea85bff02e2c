"""What every fixture HTTP server shares: a threaded server on 127.0.0.1 (a free port) in a daemon thread,
its `/v1` URL, and `with` to start and stop it."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default 5 resets connections when a client opens 32 at once

    def handle_error(self, request, client_address):  # a client that gave up on a slow reply, a killed proxy
        pass


class LocalServer:
    def listen(self, handler) -> None:
        """Bind `handler` (a BaseHTTPRequestHandler class) to a free port; `with` (or start) serves it."""
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
