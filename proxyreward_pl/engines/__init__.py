"""How text is generated or judged: one interface (`base`) over Hugging Face (`hf`), vLLM (`vllm_local`),
OpenAI-compatible servers (`openai_http`) and the closed world's exact rule judge (`closedworld`).

`make_engine` builds the engine a settings object names; within `shared_engines()` engines with the same
settings are built once and shared between stages. Engines know nothing of the lake.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

from ..settings import EngineSettings
from .base import Engine, Request, Result
from .cache import EngineCache

_SHARED: dict[tuple, Engine] | None = None


@contextlib.contextmanager
def shared_engines() -> Iterator[dict[tuple, Engine]]:
    """Within this block, engines with the same settings are made once and shared (one vLLM start per run,
    even across lakes: a shared engine's results cache follows the lake it is asked for). Yields the pool."""
    global _SHARED
    if _SHARED is not None:
        yield _SHARED
        return
    _SHARED = {}
    try:
        yield _SHARED
    finally:
        pool, _SHARED = _SHARED, None
        for engine in pool.values():
            engine.release()


def hand_back_engines() -> list[str]:
    """Every shared engine gives its accelerator back (before training runs in a process of its own); each
    takes it again on its next request. Returns the identities of those that held a model."""
    handed = []
    for engine in (_SHARED or {}).values():
        before = len(engine.events)
        engine.hand_back()
        if len(engine.events) > before:
            handed.append(engine.identity)
    return handed


def make_engine(settings: EngineSettings, cache_path: Path | None = None) -> Engine:
    """The engine `settings.engine` names, with a persistent cache at `cache_path` (None: no cache)."""
    key = tuple(getattr(settings, f.name) for f in fields(EngineSettings))
    if _SHARED is not None and key in _SHARED:
        engine = _SHARED[key]
        engine.use_cache(cache_path)
        return engine
    engine = _new_engine(settings, cache_path)
    if _SHARED is not None:
        engine.shared = True
        _SHARED[key] = engine
    return engine


def _new_engine(settings: EngineSettings, cache_path: Path | None) -> Engine:
    cache = EngineCache(cache_path) if cache_path else None
    if settings.engine == "closedworld":
        from .closedworld import WorldJudge

        return WorldJudge(settings, cache)
    if settings.engine == "openai":
        from .openai_http import OpenAIEngine

        return OpenAIEngine(settings, cache)
    if settings.engine == "vllm":
        from .vllm_local import VLLMEngine

        return VLLMEngine(settings, cache)
    from .hf import HFEngine

    return HFEngine(settings, cache)


__all__ = ["Engine", "EngineCache", "Request", "Result", "hand_back_engines", "make_engine", "shared_engines"]
