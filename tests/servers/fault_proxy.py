"""A fault-injecting HTTP proxy on 127.0.0.1 in front of a real OpenAI-compatible server (a vLLM server here).

A share of the completion requests (`fault_rate`, seeded; their kinds taken in turn) goes wrong the way
served models go wrong: 429 with Retry-After, 500, a reply slower than the client's time-out, a dropped
connection, a 200 whose body is cut short, or a 200 whose answer text is garbled. Everything else (and every
request to other routes, such as adapter loading) is forwarded as it is. It logs each request: its route,
the model it named, the fault, the prompt's hash and the status it answered, so tests can tell what was
(re)sent. `kill()` stops it the way a crashed server stops: the port closes and open connections drop.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import socket
import threading
import time
from urllib.parse import urlparse

from tests.servers import local
from tests.servers.local import LocalServer

FAULTS = ("429", "500", "slow", "drop", "truncated", "garbled")


def garble(text: str) -> str:
    """What a mangling gateway or a confused model returns: the same characters, unreadable."""
    return "#" + text[::-1].replace(":", ";")


class FaultProxy(LocalServer):
    def __init__(self, upstream: str, fault_rate: float = 0.0, faults: tuple[str, ...] = FAULTS,
                 slow_seconds: float = 3.0, retry_after: float = 0.2, seed: int = 0):
        target = urlparse(upstream)
        self.upstream = (target.hostname, target.port)
        self.fault_rate, self.faults = fault_rate, faults
        self.slow_seconds, self.retry_after = slow_seconds, retry_after
        self.rng = random.Random(seed)
        self._next_fault = 0
        self.lock = threading.Lock()
        self.log: list[dict] = []
        self.connections: set[socket.socket] = set()
        self.killed = False
        proxy = self

        class Handler(local.Handler):
            def setup(self):
                super().setup()
                with proxy.lock:
                    proxy.connections.add(self.connection)
                    if proxy.killed:
                        self.connection.shutdown(socket.SHUT_RDWR)

            def finish(self):
                with proxy.lock:
                    proxy.connections.discard(self.connection)
                super().finish()

            def do_GET(self):
                proxy._handle(self, b"")

            def do_POST(self):
                proxy._handle(self, self.rfile.read(int(self.headers.get("Content-Length", 0))))

        self.listen(Handler)

    def __exit__(self, *exc) -> None:
        self.kill()

    def kill(self) -> None:
        """Drop every open connection and stop listening, as a crashed server would."""
        with self.lock:
            self.killed = True
            for conn in list(self.connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self.httpd.shutdown()
        self.httpd.server_close()

    def completions(self) -> list[dict]:
        return [e for e in self.log if e["path"].endswith("/completions")]

    # -- forwarding -------------------------------------------------------------------------------
    def _handle(self, handler, raw: bytes) -> None:
        body = json.loads(raw) if raw else {}
        completion = handler.command == "POST" and handler.path.endswith("/completions")
        prompt = (body.get("messages") or [{}])[-1].get("content", "") if completion else ""
        with self.lock:
            if self.killed:
                handler.close_connection = True
                return handler.connection.shutdown(socket.SHUT_RDWR)
            fault = None
            if completion and self.rng.random() < self.fault_rate:
                fault = self.faults[self._next_fault % len(self.faults)]
                self._next_fault += 1
            entry = {"path": handler.path, "model": body.get("model"), "fault": fault, "time": time.monotonic(),
                     "prompt_hash": hashlib.sha256(prompt.encode()).hexdigest() if completion else None,
                     "body": body if not completion else None, "status": None}
            self.log.append(entry)
        if fault == "429":
            entry["status"] = 429
            return handler.reply(429, b'{"error": {"message": "rate limited", "type": "rate_limit", "code": 429}}',
                                 {"Retry-After": str(self.retry_after)})
        if fault == "500":
            entry["status"] = 500
            return handler.reply(500, b'{"error": {"message": "boom", "type": "server_error", "code": 500}}')
        if fault == "drop":
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return None
        if fault == "slow":
            time.sleep(self.slow_seconds)
        status, kind, data = self._forward(handler.command, handler.path, raw)
        entry["status"] = status
        if status == 200 and fault == "truncated":
            data = data[: len(data) // 2]
        elif status == 200 and fault == "garbled":
            reply = json.loads(data)
            for choice in reply.get("choices", []):
                if choice.get("message"):
                    choice["message"]["content"] = garble(choice["message"].get("content") or "")
                elif "text" in choice:
                    choice["text"] = garble(choice["text"] or "")
            data = json.dumps(reply).encode()
        try:
            handler.reply(status, data, kind=kind)
        except OSError:  # the client gave up (a slow reply past its time-out)
            handler.close_connection = True

    def _forward(self, method: str, path: str, raw: bytes) -> tuple[int, str, bytes]:
        conn = http.client.HTTPConnection(*self.upstream, timeout=600)
        try:
            conn.request(method, path, body=raw or None, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, resp.getheader("Content-Type", "application/json"), resp.read()
        except OSError as exc:
            return 502, "application/json", json.dumps({"error": {"message": f"upstream: {exc}", "code": 502}}).encode()
        finally:
            conn.close()
