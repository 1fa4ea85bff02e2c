"""A counting OpenAI-compatible server on 127.0.0.1: it answers every chat completion at once with a short
fixed answer and records when each request arrived, so tests can check a client's request rate.

With `limit` set it also keeps a rate limit of its own, the way OpenAI's API does: at most `limit` requests
in any `window` seconds; each reply says `x-ratelimit-remaining-requests` and `x-ratelimit-reset-requests` (the
time until it is back to its full limit), and a request over the limit gets 429 with Retry-After (the time
until one more request fits). Routes it does not serve answer 404, as on any server
without them (OpenAI's API has no /v1/load_lora_adapter, for one).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque

from tests.servers import local
from tests.servers.local import LocalServer


class CountingServer(LocalServer):
    def __init__(self, limit: int | None = None, window: float = 60.0, latency: float = 0.0):
        self.limit, self.window, self.latency = limit, window, latency
        self.lock = threading.Lock()
        self.arrivals: list[float] = []  # every completion request, served or refused
        self.served: list[float] = []
        self.refused = 0
        self.bodies: list[dict] = []  # what each completion request asked for
        self._recent: deque[float] = deque()
        server = self

        class Handler(local.Handler):
            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    return self.reply(200, {"object": "list", "data": [{"id": "counted", "object": "model"}]})
                self.reply(404, {"detail": "Not Found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if not self.path.endswith("/chat/completions"):
                    return self.reply(404, {"detail": "Not Found"})
                server._complete(self, body)

        self.listen(Handler)

    def max_in_window(self, window: float = 60.0) -> int:
        """The most served requests that arrived within any `window` seconds."""
        times, best, start = sorted(self.served), 0, 0
        for end, t in enumerate(times):
            while t - times[start] >= window:
                start += 1
            best = max(best, end - start + 1)
        return best

    def _complete(self, handler, body: dict) -> None:
        headers = {}
        with self.lock:
            now = time.monotonic()
            self.arrivals.append(now)
            self.bodies.append(body)
            if self.limit is not None:
                while self._recent and self._recent[0] <= now - self.window:
                    self._recent.popleft()
                if len(self._recent) >= self.limit:
                    self.refused += 1
                    free_one, free_all = self._recent[0] + self.window - now, self._recent[-1] + self.window - now
                    return handler.reply(429, {"error": {"message": "rate limit reached", "code": 429}},
                                         {"Retry-After": f"{free_one:.3f}", "x-ratelimit-remaining-requests": "0",
                                          "x-ratelimit-reset-requests": f"{free_all:.3f}s"})
                self._recent.append(now)
                headers = {"x-ratelimit-limit-requests": str(self.limit),  # reset: back to the full limit
                           "x-ratelimit-remaining-requests": str(self.limit - len(self._recent)),
                           "x-ratelimit-reset-requests": f"{self.window:.3f}s"}
            self.served.append(now)
        if self.latency:
            time.sleep(self.latency)
        handler.reply(200, {"id": "c", "object": "chat.completion", "created": 0, "model": "counted",
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                         "finish_reason": "stop"}],
                            "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}}, headers)
