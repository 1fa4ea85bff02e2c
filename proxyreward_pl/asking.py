"""Asking an engine many questions: settings resolution, retries of unusable answers, progress, token counts.

Shared by the stages that put questions to a model (score, evaluate, rollout, dataset generation)."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import tiny as tiny_models
from .engines import Engine, Request, Result
from .rewards.errors import ParseError
from .settings import EngineSettings


def resolve_engine(settings: EngineSettings, tiny: tiny_models.TinyModelConfig) -> EngineSettings:
    """engine `auto` means vllm when it is installed, else hf; `model: tiny` on an in-process engine means
    the offline tiny model (built once, cached)."""
    if settings.engine == "auto":
        import importlib.util

        found = importlib.util.find_spec("vllm") is not None
        settings = dataclasses.replace(settings, engine="vllm" if found else "hf")
    if settings.engine in ("hf", "vllm") and settings.model in ("", "tiny"):
        return dataclasses.replace(settings, model=tiny_models.resolve(settings.model, tiny))
    return settings


def answer_form(settings: EngineSettings) -> str:
    """How answers are constrained: json_schema, regex, or none (free text in the line format)."""
    if settings.structured != "auto":
        return settings.structured
    if settings.engine == "vllm" or (settings.engine == "openai" and settings.server == "vllm"):
        return "regex"
    return "json_schema" if settings.engine == "openai" else "none"


@dataclass
class Asked:
    """One question to the judge: its request, how to read the answer, and where the value goes."""

    request: Request
    parse: Callable[[Result], Any]
    key: tuple


@dataclass
class Outcome:
    value: Any = None
    error: str | None = None


class Progress:
    """A rich progress bar with rate and ETA, shown on a terminal only."""

    def __init__(self, total: int, label: str):
        from rich.progress import BarColumn, MofNCompleteColumn, TaskProgressColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        self.bar = Bar("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                       TaskProgressColumn(show_speed=True), TimeRemainingColumn(), disable=not sys.stderr.isatty(),
                       transient=True)
        self.task = self.bar.add_task(label, total=total)
        self.bar.start()

    def advance(self) -> None:
        self.bar.advance(self.task)

    def close(self) -> None:
        self.bar.stop()


class Tokens:
    def __init__(self):
        self.prompt = self.completion = self.cached = self.sent = 0

    def add(self, result: Result) -> None:
        if result.cached:
            self.cached += 1
        else:
            self.sent += 1
            self.prompt += result.prompt_tokens
            self.completion += sum(result.completion_tokens)


def structured_kwargs(form: str, regex: str, schema: dict) -> dict:
    """The Request fields that constrain an answer of the given form (see answer_form)."""
    return {"regex": regex} if form == "regex" else {"json_schema": schema} if form == "json_schema" else {}


def ask(engine: Engine, asked: list[Asked], retries: int, tokens: Tokens, label: str) -> dict[tuple, Outcome]:
    """Send every question; re-ask malformed answers (lightly sampled) up to `retries` times."""
    outcomes: dict[tuple, Outcome] = {}
    round_: dict = {}
    progress = Progress(len(asked), label)

    def on_result(res: Result) -> bool:
        item = round_["items"][id(res.request)]
        tokens.add(res)
        if not res.ok:
            outcomes[item.key] = Outcome(error=res.error)
            progress.advance()
            return False
        try:
            outcomes[item.key] = Outcome(value=item.parse(res))
        except ParseError as exc:
            outcomes[item.key] = Outcome(error=f"unusable answer: {exc}")
            round_["bad"].append(item)
            return False
        progress.advance()
        return True

    pending = asked
    try:
        for attempt in range(retries + 1):
            round_.update(items={id(a.request): a for a in pending}, bad=[])
            engine.run([a.request for a in pending], on_result)
            if not round_["bad"] or attempt == retries:
                break
            pending = [dataclasses.replace(a, request=dataclasses.replace(
                a.request, temperature=max(a.request.temperature, 0.5), seed=(a.request.seed or 0) + attempt + 1))
                for a in round_["bad"]]
    finally:
        progress.close()
    return outcomes
