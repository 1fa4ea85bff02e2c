"""Any OpenAI-compatible server (OpenAI, `vllm serve`, ...) through the async `openai` SDK.

Bounded concurrency; each request retried on 429 (honouring Retry-After / retry-after-ms), 5xx, time-outs
and dropped connections with exponential back-off and full jitter, the wait spent outside the
concurrency limit. Structured output via a JSON schema (`response_format`) or, on a vLLM server, a regex
(`structured_outputs`). The API key is read from the environment variable the settings name.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
from collections.abc import Callable

import openai

from .base import Engine, Request, Result

RETRYABLE = (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError)


def retry_after(exc: Exception) -> float | None:
    """Seconds the server asked us to wait, if it said."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    try:
        if "retry-after-ms" in headers:
            return float(headers["retry-after-ms"]) / 1000
        if "retry-after" in headers:
            return float(headers["retry-after"])
    except ValueError:
        return None
    return None


def _matching_logprob(top: list, choice: str) -> float:
    """Best log-probability among first tokens that begin `choice` (e.g. 'True', ' True', 'Tr')."""
    best = -math.inf
    for t in top:
        token = (t.token or "").strip().lower()
        if token and choice.lower().startswith(token):
            best = max(best, t.logprob)
    return best


class OpenAIEngine(Engine):
    kind = "openai"

    def __init__(self, settings, cache=None):
        super().__init__(settings, cache)
        self.rng = random.Random(settings.seed)

    def _client(self) -> openai.AsyncOpenAI:
        key = os.environ.get(self.settings.api_key_env) or "EMPTY"  # local servers take any key
        return openai.AsyncOpenAI(api_key=key, base_url=self.settings.base_url, max_retries=0,
                                  timeout=self.settings.timeout)

    def _kwargs(self, req: Request) -> dict:
        s = self.settings
        kw: dict = {"model": req.adapter or s.model, "max_tokens": req.max_tokens, "temperature": req.temperature,
                    "top_p": req.top_p, "n": req.n, "timeout": s.timeout}
        if req.seed is not None:
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

    async def _call(self, client: openai.AsyncOpenAI, req: Request) -> Result:
        kw = self._kwargs(req)
        if self.settings.api == "chat":
            resp = await client.chat.completions.create(messages=req.messages, **kw)
            texts = [c.message.content or "" for c in resp.choices]
        else:
            prompt = "\n\n".join(m["content"] for m in req.messages)
            resp = await client.completions.create(prompt=prompt, **kw)
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
            result.choice_logprobs = {c: _matching_logprob(top, c) for c in req.choices}
        return result

    async def _one(self, client, sem: asyncio.Semaphore, req: Request, on_result: Callable[[Result], None]) -> None:
        s = self.settings
        last = ""
        for attempt in range(s.max_retries + 1):
            try:
                async with sem:
                    result = await self._call(client, req)
                on_result(result)
                return
            except RETRYABLE as exc:
                last = f"{type(exc).__name__}: {exc}"
                wait = retry_after(exc)
            except openai.APIStatusError as exc:  # 4xx other than 429: asking again will not help
                on_result(Result(req, error=f"HTTP {exc.status_code}: {exc.message}"))
                return
            except (openai.APIResponseValidationError, ValueError, AttributeError, IndexError, TypeError) as exc:
                last = f"bad response: {type(exc).__name__}: {exc}"
                wait = None
            if attempt == s.max_retries:
                break
            backoff = min(s.retry_max, s.retry_initial * 2**attempt) * (0.5 + self.rng.random())
            await asyncio.sleep(wait if wait is not None else backoff)
        on_result(Result(req, error=f"gave up after {s.max_retries + 1} attempts: {last}"))

    async def _run_all(self, requests: list[Request], on_result: Callable[[Result], None]) -> None:
        sem = asyncio.Semaphore(self.settings.max_concurrency)
        async with self._client() as client:
            await asyncio.gather(*(self._one(client, sem, r, on_result) for r in requests))

    def _run(self, requests: list[Request], on_result: Callable[[Result], None]) -> None:
        asyncio.run(self._run_all(requests, on_result))
