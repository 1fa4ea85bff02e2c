"""Rate limits of a served model, beside its concurrency: the client's own budgets (requests and tokens per
minute, as OpenAI-style accounts have) and what a server says of its limits (`Retry-After`, `x-ratelimit-*`).

A budget is kept two ways at once. A log of the last minute's sends makes sure no 60-second window ever holds
more than the budget. A pacing bucket, refilled at (budget - burst) / 60 per second and holding a small burst
(one request; one second's worth of tokens), spreads the budget evenly over the minute instead of spending it
at its start: servers enforce per-minute limits over shorter periods too, and with pacing the log is only a
backstop. Tokens are
estimated before a request is sent and corrected by its reply's usage.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections import deque
from collections.abc import Callable, Mapping

WINDOW = 60.0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)?")


class BudgetError(ValueError):
    """One request needs more than a whole minute's budget: it can never be sent."""


def parse_duration(text: str) -> float | None:
    """Seconds in an `x-ratelimit-reset-*` value ('1s', '6m0s', '20ms', '0.5') or None when unreadable."""
    parts = _DURATION.findall(text.strip())
    if not parts or _DURATION.sub("", text.strip()):
        return None
    unit = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "": 1.0}
    return sum(float(n) * unit[u] for n, u in parts)


class MinuteBudget:
    """At most `per_minute` units (requests or tokens) in any 60-second window, paced evenly."""

    def __init__(self, per_minute: float, burst: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.limit = float(per_minute)
        self.burst = min(max(1.0, burst), self.limit)
        self.rate = max(self.limit - self.burst, 1.0) / WINDOW  # burst + rate * 60 <= limit
        self.level, self.stamp = self.burst, clock()
        self.log: deque[list[float]] = deque()  # [sent at, amount]
        self.clock = clock

    def wait(self, amount: float, now: float) -> float:
        """Seconds until `amount` may be taken (0: now)."""
        if amount > self.limit:
            raise BudgetError(f"one request needs {amount:.0f} of a budget of {self.limit:.0f} per minute")
        while self.log and self.log[0][0] <= now - WINDOW:
            self.log.popleft()
        self.level = min(self.burst, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        short = min(amount, self.burst) - self.level
        pace = short / self.rate if short > 1e-9 else 0.0  # rounding is not a wait
        excess = sum(a for _, a in self.log) + amount - self.limit
        for sent, a in self.log:  # the window frees up as its oldest sends leave it
            if excess <= 0:
                break
            excess -= a
            pace = max(pace, sent + WINDOW - now + 1e-6)  # past the instant it leaves, rounding aside
        return pace

    def take(self, amount: float, now: float) -> list[float]:
        self.level -= amount
        entry = [now, float(amount)]
        self.log.append(entry)
        return entry

    def correct(self, entry: list[float], actual: float) -> None:
        """The reply said what the request really cost."""
        self.level = min(self.burst, self.level + entry[1] - actual)
        entry[1] = float(actual)


class Budgets:
    """The client's requests-per-minute and tokens-per-minute budgets (either may be None: unlimited), shared
    by every endpoint. Waiters are served in arrival order."""

    def __init__(self, requests_per_minute: int | None, tokens_per_minute: int | None,
                 clock: Callable[[], float] = time.monotonic):
        self.requests = MinuteBudget(requests_per_minute, 1, clock) if requests_per_minute else None
        self.tokens = MinuteBudget(tokens_per_minute, tokens_per_minute / WINDOW, clock) if tokens_per_minute else None
        self.clock = clock
        self._lock: asyncio.Lock | None = None
        self._loop = None

    async def acquire(self, tokens: float) -> tuple[list[float] | None, list[float] | None]:
        """Wait until one request of about `tokens` tokens fits both budgets; return what to correct later."""
        if self.requests is None and self.tokens is None:
            return None, None
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # each engine run has its own event loop
            self._lock, self._loop = asyncio.Lock(), loop
        async with self._lock:
            while True:
                now = self.clock()
                wait = max(self.requests.wait(1, now) if self.requests else 0.0,
                           self.tokens.wait(tokens, now) if self.tokens else 0.0)
                if wait <= 0:
                    return (self.requests.take(1, now) if self.requests else None,
                            self.tokens.take(tokens, now) if self.tokens else None)
                await asyncio.sleep(wait)

    def settle(self, taken: tuple[list[float] | None, list[float] | None], actual_tokens: int | None) -> None:
        if taken[1] is not None and actual_tokens is not None and self.tokens is not None:
            self.tokens.correct(taken[1], actual_tokens)


class ServerLimits:
    """What one server said of its own limits: a pause (Retry-After on a 429) and its remaining requests and
    tokens until their reset (`x-ratelimit-remaining-*`, `x-ratelimit-reset-*`)."""

    def __init__(self):
        self.paused_until = 0.0
        self.remaining: dict[str, float] = {"requests": math.inf, "tokens": math.inf}
        self.resets_at: dict[str, float] = {"requests": 0.0, "tokens": 0.0}

    def observe(self, headers: Mapping[str, str], now: float, in_flight: int) -> None:
        """Read a reply's headers; `in_flight`: other requests sent to this server and not yet answered (the
        remaining counts may not include them yet)."""
        for kind in ("requests", "tokens"):
            remaining, reset = headers.get(f"x-ratelimit-remaining-{kind}"), headers.get(f"x-ratelimit-reset-{kind}")
            if remaining is None:
                continue
            try:
                left = float(remaining)
            except ValueError:
                continue
            seconds = parse_duration(reset) if reset else None
            self.remaining[kind] = left - (in_flight if kind == "requests" else 0)
            self.resets_at[kind] = now + (seconds if seconds is not None else 1.0)

    def pause(self, seconds: float, now: float) -> None:
        self.paused_until = max(self.paused_until, now + seconds)

    def wait(self, tokens: float, now: float) -> float:
        """Seconds until this server would take a request of about `tokens` tokens."""
        wait = self.paused_until - now
        for kind, amount in (("requests", 1.0), ("tokens", tokens)):
            if now >= self.resets_at[kind]:
                self.remaining[kind] = math.inf  # its window has reset: nothing known until the next reply
            elif self.remaining[kind] < amount:
                wait = max(wait, self.resets_at[kind] - now)
        return max(0.0, wait)

    def take(self, tokens: float) -> None:
        self.remaining["requests"] -= 1
        self.remaining["tokens"] -= tokens


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds a server asked us to wait (`retry-after-ms` or `retry-after`), if it said."""
    headers = headers or {}
    try:
        if "retry-after-ms" in headers:
            return float(headers["retry-after-ms"]) / 1000
        if "retry-after" in headers:
            return float(headers["retry-after"])
    except ValueError:
        return None
    return None


def estimate_tokens(messages: list[dict[str, str]], max_tokens: int, n: int) -> int:
    """Tokens a request may cost before its reply says: about 4 characters per prompt token, plus every
    completion token it may produce (what OpenAI counts against a limit when a request arrives)."""
    chars = sum(len(m.get("content") or "") for m in messages)
    return chars // 4 + max_tokens * n
