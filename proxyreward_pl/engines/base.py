"""The engine interface: `Request`, `Result`, and `Engine`, whose `run` answers from the persistent cache
before asking the model.

An engine takes `Request`s (chat messages plus sampling settings, or a set of `choices` whose
continuation log-probabilities are wanted) and reports a `Result` for each through a callback, as soon as
it has it. Every successful result is stored in a persistent cache keyed by the engine's identity and the
exact request, before the caller sees it: a re-run, or a run after a crash, pays for nothing twice.
Engines know nothing of the lake.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..settings import EngineSettings
from .cache import EngineCache


@dataclass
class Request:
    messages: list[dict[str, str]]
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None
    json_schema: dict | None = None
    regex: str | None = None
    choices: tuple[str, ...] | None = None
    """Score these continuations of the prompt (log-probability) instead of generating."""
    adapter: str | None = None
    """A LoRA adapter (folder for hf/vllm, served name for openai) to generate with."""
    adapter_version: str | None = None
    """What the adapter is (a hash of its weights): part of the cache key, so a retrained adapter at the
    same path or name is never answered from an older one's cache."""
    tag: Any = field(default=None, compare=False)
    """The caller's bookkeeping; not part of the request."""
    origin: Request | None = field(default=None, compare=False)
    """The request this one asks again after an unusable answer: an answer accepted here is cached under the
    origin's key too, so the next run finds it without asking (not part of the request)."""

    def key(self, identity: str) -> str:
        body = {f.name: getattr(self, f.name) for f in fields(self) if f.compare}
        return hashlib.sha256(json.dumps([identity, body], sort_keys=True).encode()).hexdigest()


@dataclass
class Result:
    request: Request
    texts: list[str] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)
    completion_tokens: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    choice_logprobs: dict[str, float] | None = None
    error: str | None = None
    cached: bool = False
    """Answered from the persistent results cache (nothing was computed)."""
    cached_prompt_tokens: int = 0
    """Prompt tokens the model did not compute because a prefix cache held them (a prompt prefix shared with
    another request); the rest of `prompt_tokens` was prefilled."""

    @property
    def ok(self) -> bool:
        return self.error is None

    def payload(self) -> dict:
        return {"texts": self.texts, "finish_reasons": self.finish_reasons,
                "completion_tokens": self.completion_tokens, "prompt_tokens": self.prompt_tokens,
                "choice_logprobs": {k: (v if math.isfinite(v) else None) for k, v in self.choice_logprobs.items()}
                if self.choice_logprobs is not None else None}

    @classmethod
    def from_payload(cls, request: Request, data: dict) -> Result:
        lp = data.get("choice_logprobs")
        return cls(request, data["texts"], data["finish_reasons"], data["completion_tokens"], data["prompt_tokens"],
                   {k: (v if v is not None else -math.inf) for k, v in lp.items()} if lp is not None else None,
                   cached=True)


class Engine:
    """Base: cache handling around `_run`, which engines implement."""

    kind = "engine"

    def __init__(self, settings: EngineSettings, cache: EngineCache | None = None):
        self.settings = settings
        self.cache = cache
        self.cache_path = cache.path if cache is not None else None
        self.sent = 0  # requests that reached the model (not served from the cache)
        self.shared = False  # held by `shared_engines()`: close() leaves it open for the next stage
        self.events: list[str] = []  # "load" and "hand_back", in order: how the accelerator changed hands

    @property
    def identity(self) -> str:
        return f"{self.kind}:{self.settings.model}"

    def run(self, requests: Sequence[Request], on_result: Callable[[Result], bool | None]) -> None:
        """Report a Result for every request (in completion order), from the cache when it has one.

        A result is cached after `on_result` sees it, unless it failed or `on_result` returned False (an
        answer the caller could not use, such as a malformed one, is asked again next time)."""
        pending = []
        for req in requests:
            hit = self.cache.get(req.key(self.identity)) if self.cache else None
            if hit is not None:
                on_result(Result.from_payload(req, hit))
            else:
                pending.append(req)
        if not pending:
            return

        def store(result: Result) -> None:
            accepted = on_result(result)
            if result.ok and accepted is not False and self.cache is not None:
                request = result.request
                while request is not None:
                    self.cache.put(request.key(self.identity), result.payload())
                    request = request.origin

        self.sent += len(pending)
        self._run(pending, store)

    def _run(self, requests: list[Request], on_result: Callable[[Result], None]) -> None:
        raise NotImplementedError

    def serve_adapter(self, name: str, path: Path) -> None:
        """Requests whose `adapter` is `name` mean the LoRA adapter in folder `path`. In-process engines load the
        folder a request names themselves; a served engine loads it into its servers (see `openai_http`)."""

    def use_cache(self, path: Path | None) -> None:
        """Store results in the cache at `path` from now on (a shared engine moving on to another lake)."""
        if path is not None and self.cache_path is not None and Path(path) == self.cache_path:
            return
        if self.cache is not None:
            self.cache.close()
        self.cache = EngineCache(path) if path else None
        self.cache_path = Path(path) if path else None

    def close(self) -> None:
        if not self.shared:
            self.release()

    def hand_back(self) -> None:
        """Give the accelerator back, so that training in another process can have its memory; the next request
        takes it again. An engine that holds no model (a remote server, a rule) has nothing to give."""

    def release(self) -> None:
        """Free the model (and the cache connection)."""
        if self.cache is not None:
            self.cache.close()
