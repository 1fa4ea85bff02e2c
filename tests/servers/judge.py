"""A real OpenAI-compatible HTTP judge on 127.0.0.1 for tests and benchmarks.

It implements `/v1/chat/completions` and `/v1/completions`, answers proxy-judge prompts from the
statements' known truth (and rating prompts with a fixed score), honours `response_format` JSON schemas
and `logprobs` (a single statement's top log-probs over True / False / Unknown, or the ones a test sets),
and injects faults at a chosen rate: malformed JSON, missing answers, 429 with Retry-After, 500, replies
slower than the client's time-out, and dropped connections. It logs every request it answered so tests can
tell what was (re)sent.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import socket
import threading
import time

from tests.servers import local
from tests.servers.local import LocalServer

FAULTS = ("malformed", "missing", "429", "500", "slow", "drop")
_NUMBERED = re.compile(r"^(\d+)\. (.+)$", re.MULTILINE)
_SINGLE = re.compile(r"^Statement: (.+)$", re.MULTILINE)
_RESPONSE = re.compile(r"<response>\n(.*?)\n</response>", re.DOTALL)


class JudgeServer(LocalServer):
    def __init__(self, truth: dict[str, bool] | None = None, fault_rate: float = 0.0,
                 faults: tuple[str, ...] = FAULTS, latency: float = 0.0, slow_seconds: float = 3.0,
                 seed: int = 0, rating: int = 7, mention_rule: bool = False,
                 logprobs: dict[str, dict[str, float]] | None = None, min_shared_words: int | None = None,
                 decide_fraction: float = 0.0):
        self.truth = truth or {}
        self.logprobs = logprobs or {}  # statement -> the top log-probs a single-statement request gets
        self.fault_rate, self.faults, self.latency, self.slow_seconds = fault_rate, faults, latency, slow_seconds
        self.rng = random.Random(seed)
        self._next_fault = 0  # faults are drawn at `fault_rate`, their kinds taken in turn
        self.rating = rating
        self.mention_rule = mention_rule  # decide a statement True only if the response contains it verbatim
        # decide a statement only if the response shares this many of its words (4+ letters), else Unknown
        self.min_shared_words = min_shared_words
        # ... or when a hash of (statement, response) falls below this fraction: verdicts that depend on the
        # answer whatever its quality (a tiny model's answers may share no word with any statement)
        self.decide_fraction = decide_fraction
        self.lock = threading.Lock()
        self.log: list[dict] = []  # one entry per request received: {"prompt_hash", "fault", "time", ...}
        self.in_flight = self.max_in_flight = 0
        self._seen: list[list[str]] = []  # the prompts answered so far, as words
        server = self

        class Handler(local.Handler):
            def do_GET(self):
                self.reply(200, {"object": "list", "data": [{"id": "judge", "object": "model"}]})

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                server._handle(self, body)


        self.listen(Handler)

    def start(self) -> JudgeServer:
        return self.__enter__()

    def stop(self) -> None:
        self.__exit__()

    # -- answering --------------------------------------------------------------------------------
    def _handle(self, handler, body: dict) -> None:
        prompt = body["messages"][-1]["content"] if "messages" in body else body.get("prompt", "")
        with self.lock:
            fault = None
            if self.rng.random() < self.fault_rate:
                fault = self.faults[self._next_fault % len(self.faults)]
                self._next_fault += 1
            self.log.append({"prompt_hash": hashlib.sha256(prompt.encode()).hexdigest(), "fault": fault,
                             "time": time.monotonic(),
                             "path": handler.path, "structured_outputs": body.get("structured_outputs"),
                             "response_format": body.get("response_format")})
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency:
                time.sleep(self.latency)
            if fault == "429":
                return handler.reply(429, {"error": {"message": "rate limited", "type": "rate_limit"}},
                                     {"Retry-After": "0.05", "retry-after-ms": "50"})
            if fault == "500":
                return handler.reply(500, {"error": {"message": "boom", "type": "server_error"}})
            if fault == "drop":
                handler.close_connection = True
                handler.connection.shutdown(socket.SHUT_RDWR)
                return None
            if fault == "slow":
                time.sleep(self.slow_seconds)
            content, logprobs = self._answer(prompt, body, fault)
            chat = "messages" in body
            choice = ({"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop",
                       "logprobs": logprobs} if chat else
                      {"index": 0, "text": content, "finish_reason": "stop", "logprobs": logprobs})
            handler.reply(200, {"id": "x", "object": "chat.completion" if chat else "text_completion",
                                "created": 0, "model": body.get("model", "judge"), "choices": [choice],
                                "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens":
                                          len(content.split()), "total_tokens": 0,
                                          "prompt_tokens_details": {"cached_tokens": self._cached(prompt)}}})
        finally:
            with self.lock:
                self.in_flight -= 1

    def _cached(self, prompt: str) -> int:
        """Words of this prompt that begin an earlier one: what a server's prefix cache would have served."""
        words = prompt.split()
        with self.lock:
            best = max((_common(words, seen) for seen in self._seen), default=0)
            self._seen.append(words)
        return best

    def _decide(self, statement: str, response: str) -> str:
        if statement not in self.truth:
            return "Unknown"
        if self.mention_rule and statement.lower() not in response.lower():
            return "Unknown"
        if self.min_shared_words is not None and len(_words(statement) & _words(response)) < self.min_shared_words:
            digest = hashlib.sha256(f"{statement}\n{response}".encode()).digest()
            if int.from_bytes(digest[:4], "big") / 2**32 >= self.decide_fraction:
                return "Unknown"
        return "True" if self.truth[statement] else "False"

    def _answer(self, prompt: str, body: dict, fault: str | None) -> tuple[str, dict | None]:
        response = (_RESPONSE.search(prompt) or [None, ""])[1]
        wants_logprobs = body.get("logprobs") not in (None, False)
        single = _SINGLE.search(prompt)
        if single or wants_logprobs and "Statement:" in prompt:
            verdict = self._decide(single.group(1).strip(), response) if single else "Unknown"
            if wants_logprobs:
                statement = single.group(1).strip() if single else ""
                table = self.logprobs.get(statement) or {word: (-0.05 if word == verdict else -3.0)
                                                         for word in ("True", "False", "Unknown")}
                return verdict, _logprobs(sorted(table.items(), key=lambda kv: -kv[1]))
            return verdict, None
        numbered = _NUMBERED.findall(prompt)
        if numbered and "numbered statement" in prompt:
            verdicts = {int(i): self._decide(s.strip(), response) for i, s in numbered}
            if fault == "missing":
                verdicts.pop(max(verdicts))
            if body.get("response_format", {}).get("type") == "json_schema":
                text = json.dumps({str(k): v for k, v in verdicts.items()})
                return (text[:-3] if fault == "malformed" else text), None
            text = "".join(f"{k}: {v}\n" for k, v in verdicts.items())
            return ("1 True 2 Fals" if fault == "malformed" else text), None
        # rating prompts (LLM-as-a-judge; LongReward's are answered by servers/longreward_judge.py)
        if wants_logprobs:
            return str(self.rating), _logprobs([(str(self.rating), -0.1), (str(self.rating - 1), -2.5)])
        if body.get("response_format", {}).get("type") == "json_schema":
            return json.dumps({"rationale": "fine", "score": self.rating}), None
        return ("Rationale: fine\nScore: ?" if fault in ("malformed", "missing")
                else f"Rationale: fine\nScore: {self.rating}\n"), None

    def requests_for(self, prompt_hashes: set[str]) -> int:
        return sum(e["prompt_hash"] in prompt_hashes for e in self.log)


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 3}


def _common(a: list[str], b: list[str]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _logprobs(pairs: list[tuple[str, float]]) -> dict:
    top = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in pairs]
    return {"content": [{"token": pairs[0][0], "logprob": pairs[0][1], "bytes": list(pairs[0][0].encode()),
                         "top_logprobs": top}]}


if __name__ == "__main__":  # a judge to point `proxyreward score --judge.base_url` at by hand
    import sys

    with JudgeServer(fault_rate=float(sys.argv[1]) if len(sys.argv) > 1 else 0.0) as s:
        print(s.url, flush=True)
        threading.Event().wait()
