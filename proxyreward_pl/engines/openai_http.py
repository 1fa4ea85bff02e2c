"""Any OpenAI-compatible server (OpenAI, `vllm serve`, ...) through the async `openai` SDK.

Bounded concurrency beside requests- and tokens-per-minute budgets (`ratelimit`); one or several endpoints
(`endpoints`): the least busy takes each request, and a request that failed on one is retried on another.
Each request is retried on 429 (honouring Retry-After and `x-ratelimit-*`), 5xx, time-outs, dropped
connections and unreadable replies, with exponential back-off and full jitter, the wait spent outside the
concurrency limit. Structured output via a JSON schema (`response_format`) or, on a vLLM server, a regex
(`structured_outputs`). A policy's LoRA adapters are loaded into every endpoint at run time and unloaded
when the policy moves on. The API key is read from the environment variable the settings name.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import openai

from .base import Engine, Request, Result
from .endpoints import Endpoint, load_adapter, path_on_server, pick, unload_adapter
from .ratelimit import BudgetError, Budgets, estimate_tokens, retry_after

UNREADABLE = (openai.APIResponseValidationError, ValueError, AttributeError, IndexError, TypeError, KeyError)


def choice_logprob(top: list, choice: str) -> float:
    """Log-probability that the next token is `choice`: the top tokens that are exactly it, apart from
    surrounding space and case ('True', ' True', 'true'), summed. A token that only begins it ('1' of '10',
    'Tr' of 'True') is not it."""
    want = choice.strip().lower()
    found = [t.logprob for t in top if (t.token or "").strip().lower() == want]
    if not found:
        return -math.inf
    best = max(found)
    return best + math.log(sum(math.exp(lp - best) for lp in found))


class OpenAIEngine(Engine):
    kind = "openai"

    def __init__(self, settings, cache=None):
        super().__init__(settings, cache)
        self.rng = random.Random(settings.seed)
        self.endpoints = [Endpoint(url, i) for i, url in enumerate(settings.urls or (None,))]
        self.budgets = Budgets(settings.max_requests_per_minute, settings.max_tokens_per_minute)
        self.adapters: dict[str, str] = {}  # served name -> local folder, of the policy being served
        self.retired: set[str] = set()  # served earlier, to unload from every endpoint

    # -- adapters ---------------------------------------------------------------------------------
    def serve_adapter(self, name: str, path: Path) -> None:
        """Requests naming `name` use the adapter in folder `path`: it is loaded into each endpoint before its
        first such request there. The adapters served before are no longer used: they are unloaded."""
        if name in self.adapters:
            return
        self.retired |= set(self.adapters)
        self.retired.discard(name)
        self.adapters = {name: str(path)}

    async def _ensure_adapter(self, endpoint: Endpoint, name: str) -> None:
        if name in endpoint.loaded:
            return
        future = endpoint.loading.get(name)
        if future is None:
            path = path_on_server(self.adapters[name], self.settings.adapter_path_on_server)
            future = endpoint.loading[name] = asyncio.ensure_future(load_adapter(endpoint, name, path))
            future.add_done_callback(lambda _: endpoint.loading.pop(name, None))  # a failed load is tried again
        await asyncio.shield(future)

    async def _unload(self, names: set[str]) -> set[str]:
        """Unload `names` wherever this engine loaded them; the names some server could not be reached for."""
        left = set()
        for endpoint in self.endpoints:
            for name in names & set(endpoint.loaded):
                try:
                    await unload_adapter(endpoint, name)
                except (openai.APIConnectionError, openai.APIStatusError):
                    left.add(name)
        return left

    # -- requests ---------------------------------------------------------------------------------
    def _client(self, url: str | None) -> openai.AsyncOpenAI:
        key = os.environ.get(self.settings.api_key_env) or "EMPTY"  # local servers take any key
        return openai.AsyncOpenAI(api_key=key, base_url=url, max_retries=0, timeout=self.settings.timeout)

    def _kwargs(self, req: Request) -> dict:
        s = self.settings
        kw: dict = {"model": req.adapter or s.model, "max_tokens": req.max_tokens, "temperature": req.temperature,
                    "top_p": req.top_p, "n": req.n, "timeout": s.timeout}
        if req.seed is not None and s.per_request_seed:
            kw["seed"] = req.seed
        extra: dict = {}
        if req.choices:
            kw.update(max_tokens=1, temperature=0.0, n=1)
            if s.api == "chat":
                kw.update(logprobs=True, top_logprobs=20)
            else:
                kw["logprobs"] = 20
        elif req.regex and s.server == "vllm" and s.structured in ("auto", "regex"):
            extra["structured_outputs"] = {"regex": req.regex}
        elif req.json_schema and s.structured in ("auto", "json_schema"):
            kw["response_format"] = {"type": "json_schema",
                                     "json_schema": {"name": "answer", "schema": req.json_schema, "strict": True}}
        if extra:
            kw["extra_body"] = extra
        return kw

    async def _call(self, client: openai.AsyncOpenAI, req: Request) -> tuple[Result, dict, int | None]:
        """The result, the reply's headers and the tokens it cost."""
        kw = self._kwargs(req)
        if self.settings.api == "chat":
            raw = await client.chat.completions.with_raw_response.create(messages=req.messages, **kw)
            resp = raw.parse()
            texts = [c.message.content or "" for c in resp.choices]
        else:
            prompt = "\n\n".join(m["content"] for m in req.messages)
            raw = await client.completions.with_raw_response.create(prompt=prompt, **kw)
            resp = raw.parse()
            texts = [c.text or "" for c in resp.choices]
        usage = resp.usage
        details = getattr(usage, "prompt_tokens_details", None)  # the server's prefix cache, where it says
        result = Result(req, texts=texts, finish_reasons=[c.finish_reason or "" for c in resp.choices],
                        prompt_tokens=usage.prompt_tokens if usage else 0,
                        completion_tokens=[usage.completion_tokens // max(1, len(texts)) if usage else 0] * len(texts),
                        cached_prompt_tokens=getattr(details, "cached_tokens", None) or 0)
        if req.choices:
            first = resp.choices[0]
            if self.settings.api == "chat":
                content = first.logprobs.content if first.logprobs else None
                top = content[0].top_logprobs if content else []
            else:
                lp = first.logprobs.top_logprobs[0] if first.logprobs and first.logprobs.top_logprobs else {}
                top = [type("T", (), {"token": k, "logprob": v}) for k, v in lp.items()]
            result.choice_logprobs = {c: choice_logprob(top, c) for c in req.choices}
        spent = (usage.prompt_tokens + usage.completion_tokens) if usage else None
        return result, dict(raw.headers), spent

    def _backoff(self, attempt: int) -> float:
        s = self.settings
        return min(s.retry_max, s.retry_initial * 2**attempt) * (0.5 + self.rng.random())

    async def _endpoint(self, tokens: float, avoid: Endpoint | None) -> Endpoint:
        while True:
            chosen = pick(self.endpoints, tokens, time.monotonic(), avoid)
            if isinstance(chosen, Endpoint):
                return chosen
            await asyncio.sleep(chosen)

    async def _one(self, sem: asyncio.Semaphore, req: Request, on_result: Callable[[Result], None]) -> None:
        s = self.settings
        tokens = estimate_tokens(req.messages, 1 if req.choices else req.max_tokens, 1 if req.choices else req.n)
        last, avoid = "", None
        for attempt in range(s.max_retries + 1):
            wait = 0.0
            async with sem:
                endpoint = avoid = await self._endpoint(tokens, avoid)
                try:
                    if req.adapter in self.adapters:
                        await self._ensure_adapter(endpoint, req.adapter)
                    taken = await self.budgets.acquire(tokens)
                    endpoint.limits.take(tokens)
                    endpoint.outstanding += 1
                    try:
                        result, headers, spent = await self._call(endpoint.client, req)
                    finally:
                        endpoint.outstanding -= 1
                    endpoint.answered()
                    endpoint.limits.observe(headers, time.monotonic(), endpoint.outstanding)
                    self.budgets.settle(taken, spent)
                    on_result(result)
                    return
                except BudgetError as exc:
                    on_result(Result(req, error=f"over budget: {exc}"))
                    return
                except openai.APITimeoutError as exc:
                    last, wait = f"{type(exc).__name__}: {exc}", self._backoff(attempt)
                except openai.APIConnectionError as exc:  # refused or dropped
                    last = f"{type(exc).__name__} ({endpoint.name}): {exc}"
                    if len(self.endpoints) > 1:  # leave it alone a while: the others take its requests
                        endpoint.unreachable(time.monotonic(), s.retry_initial, s.retry_max, self.rng)
                    else:
                        wait = self._backoff(attempt)
                except openai.RateLimitError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                    now, headers = time.monotonic(), exc.response.headers
                    endpoint.limits.observe(headers, now, endpoint.outstanding)
                    endpoint.limits.pause(retry_after(headers) or self._backoff(attempt), now)
                except openai.InternalServerError as exc:
                    last, wait = f"{type(exc).__name__}: {exc}", self._backoff(attempt)
                except openai.NotFoundError as exc:
                    if req.adapter not in self.adapters or "does not exist" not in str(exc.message):
                        on_result(Result(req, error=f"HTTP {exc.status_code}: {exc.message}"))
                        return
                    last = f"adapter {req.adapter} gone from {endpoint.name} (restarted?): {exc.message}"
                    endpoint.loaded.pop(req.adapter, None)  # loaded again on the next try
                except openai.APIStatusError as exc:  # other 4xx: asking again will not help
                    on_result(Result(req, error=f"HTTP {exc.status_code}: {exc.message}"))
                    return
                except UNREADABLE as exc:
                    last, wait = f"bad response: {type(exc).__name__}: {exc}", self._backoff(attempt)
                finally:
                    endpoint.probing = False
            if attempt == s.max_retries:
                break
            others = [e for e in self.endpoints if e is not avoid and e.wait(tokens, time.monotonic()) <= 0]
            if wait and not others:
                await asyncio.sleep(wait)
        on_result(Result(req, error=f"gave up after {s.max_retries + 1} attempts: {last}"))

    async def _run_all(self, requests: list[Request], on_result: Callable[[Result], None]) -> None:
        sem = asyncio.Semaphore(self.settings.max_concurrency)
        for endpoint in self.endpoints:
            endpoint.client = self._client(endpoint.url)
        try:
            if self.retired:
                self.retired = await self._unload(self.retired)
            async with asyncio.TaskGroup() as group:  # an error (a refused adapter) stops every request
                for r in requests:
                    group.create_task(self._one(sem, r, on_result))
        except* Exception as failed:
            raise failed.exceptions[0] from None
        finally:
            for endpoint in self.endpoints:
                endpoint.loading.clear()
                await endpoint.client.close()

    def _run(self, requests: list[Request], on_result: Callable[[Result], None]) -> None:
        asyncio.run(self._run_all(requests, on_result))

    def release(self) -> None:
        """Unload every adapter this engine loaded (a server that cannot be reached keeps them)."""
        if any(e.loaded for e in self.endpoints):
            async def unload_all() -> None:
                for endpoint in self.endpoints:
                    endpoint.client = self._client(endpoint.url)
                try:
                    await self._unload({n for e in self.endpoints for n in e.loaded})
                finally:
                    for endpoint in self.endpoints:
                        await endpoint.client.close()

            asyncio.run(unload_all())
        super().release()
