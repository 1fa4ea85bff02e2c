"""Asking a model, shared by every stage that does (rollout, score, evaluate, dataset generation): engine
settings resolution, the policy of an iteration, sampling k answers per question, asking many questions with
retries of unusable answers, progress bars and token counts."""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import merged, models
from .console import progress_stream
from .engines import Engine, Request, Result
from .errors import ProxyRewardError
from .identity import weights_digest
from .lake import Lake
from .policy_prompt import sampling_prompts
from .rewards.parsing import ParseError
from .settings import EngineSettings, TinySettings


def resolve_engine(settings: EngineSettings, tiny: TinySettings) -> EngineSettings:
    """engine `auto` means vllm when it is installed, else hf; a named model (`tiny`, `smollm2`) on an
    in-process engine means its cached offline folder (`models.resolve`)."""
    if settings.engine == "auto":
        import importlib.util

        found = importlib.util.find_spec("vllm") is not None
        settings = dataclasses.replace(settings, engine="vllm" if found else "hf")
    if settings.engine in ("hf", "vllm") and models.is_named(settings.model):
        return dataclasses.replace(settings, model=models.resolve(settings.model, tiny))
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
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TaskProgressColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        stream = progress_stream()  # the terminal, also while a stage's output goes to its log
        self.bar = Bar("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                       TaskProgressColumn(show_speed=True), TimeRemainingColumn(), disable=not stream.isatty(),
                       transient=True, console=Console(file=stream), redirect_stdout=False,
                       redirect_stderr=False)  # rich's redirect would carry library output past a stage's log
        self.task = self.bar.add_task(label, total=total)
        self.bar.start()

    def advance(self) -> None:
        self.bar.advance(self.task)

    def close(self) -> None:
        self.bar.stop()


class Tokens:
    """Requests sent and answered from the results cache; of the sent ones' prompt tokens, how many a prefix
    cache served (`prompt_cached`) and how many were computed (`prefilled`)."""

    def __init__(self):
        self.prompt = self.completion = self.cached = self.sent = self.prompt_cached = 0

    def add(self, result: Result) -> None:
        if result.cached:
            self.cached += 1
        else:
            self.sent += 1
            self.prompt += result.prompt_tokens
            self.prompt_cached += result.cached_prompt_tokens
            self.completion += sum(result.completion_tokens)

    @property
    def prefilled(self) -> int:
        return self.prompt - self.prompt_cached

    def metrics(self) -> dict[str, int]:
        return {"sent": self.sent, "cached": self.cached, "prompt_tokens": self.prompt,
                "prompt_tokens_prefilled": self.prefilled, "prompt_tokens_from_cache": self.prompt_cached,
                "completion_tokens": self.completion}


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
                a.request, temperature=max(a.request.temperature, 0.5), seed=(a.request.seed or 0) + attempt + 1,
                origin=a.request)) for a in round_["bad"]]
    finally:
        progress.close()
    return outcomes


@dataclass(frozen=True)
class Policy:
    """Iteration N's policy: the engine settings that run it, what requests name as its adapter, the name rows
    record, and the adapter's folder."""

    engine: EngineSettings
    adapter: str | None
    """None (the base model, or a fully fine-tuned one), the adapter's folder (in-process engines) or the name
    it is served under (openai)."""
    name: str
    """`<model>+base`, `<model>+adapter:<hash of its weights>` or `<model>+full:<hash>`, as rows record it."""
    path: Path | None = None


def policy_of(lake: Lake, iteration: int, engine: EngineSettings, prefix: str = "iteration-") -> Policy:
    """Iteration N's policy: the base model (N = 0), the base plus N's LoRA adapter, or N's fully fine-tuned
    model. An in-process vLLM engine without CUDA samples an adapter merged into the base weights (`merged`). A
    served adapter's name carries its weights' hash: every version gets a new name, since re-loading a
    name with new weights can serve stale prefix-cache blocks (vLLM #42125)."""
    if iteration == 0:
        return Policy(engine, None, f"{engine.model}+base")
    full = lake.model_dir(iteration)
    if (full / "config.json").exists():
        if engine.engine == "openai":
            raise ProxyRewardError(f"iteration {iteration}'s policy is a fully fine-tuned model ({full}); a server "
                                   "cannot load it at run time: serve it (vllm serve that folder) and point "
                                   "--policy.model at it, or train with LoRA")
        return Policy(dataclasses.replace(engine, model=str(full)), None, f"{engine.model}+full:{weights_digest(full)}")
    path = lake.adapter_dir(iteration)
    if not (path / "adapter_model.safetensors").exists():
        raise ProxyRewardError(f"iteration {iteration}'s policy needs its adapter in {path}; train iteration "
                               f"{iteration} first")
    digest = weights_digest(path, "adapter_model.safetensors")
    name = f"{engine.model}+adapter:{digest}"
    if engine.engine != "openai" and merged.wanted(engine):
        model = merged.merged_model(lake, iteration, engine.model, path, digest)
        return Policy(dataclasses.replace(engine, model=str(model), enable_lora=False), None, name)
    adapter = f"{prefix}{iteration}-{digest}" if engine.engine == "openai" else str(path)
    return Policy(engine, adapter, name, path)


def sample(engine, questions: list[dict], *, iteration: int, k: int, temperature: float, top_p: float,
           max_new_tokens: int, seed: int, policy: Policy, label: str,
           first_index: int = 0) -> tuple[list[dict], dict]:
    """k answers to every question: rollout rows (in question order, `sample_index` counting from
    `first_index`; -1 marks evaluation's extra greedy answer) and token counts. The prompt is the question, or
    its context and the question (`policy_prompt`), cut to fit the engine's max_model_len."""
    adapter = policy.adapter
    if adapter is not None and policy.path is not None:
        engine.serve_adapter(adapter, policy.path)
    texts, truncated = sampling_prompts(questions, engine.settings, max_new_tokens)
    requests = [Request([{"role": "user", "content": texts[q["question_id"]]}], max_tokens=max_new_tokens,
                        temperature=temperature, top_p=top_p, n=k, adapter=adapter,
                        adapter_version=policy.name if adapter else None,
                        seed=seed * 1_000_003 + zlib.crc32(q["question_id"].encode()), tag=q["question_id"])
                for q in questions]
    got: dict[str, Result] = {}
    progress = Progress(len(requests), label)
    tokens = {"generated": 0, "sent": 0, "cached": 0, "truncated_prompts": truncated}
    t0 = time.perf_counter()

    def on_result(res: Result) -> bool:
        got[res.request.tag] = res
        progress.advance()
        if res.ok:
            tokens["cached" if res.cached else "sent"] += 1
            if not res.cached:
                tokens["generated"] += sum(res.completion_tokens)
        return res.ok and len(res.texts) == k

    try:
        engine.run(requests, on_result)
    finally:
        progress.close()
    failed = [qid for qid, r in got.items() if not r.ok]
    if failed:
        raise ProxyRewardError(f"the policy engine failed on {len(failed)} question(s), e.g. {failed[0]}: "
                               f"{got[failed[0]].error}")
    rows = []
    for q in questions:
        res = got[q["question_id"]]
        answers = zip(res.texts, res.finish_reasons, res.completion_tokens, strict=True)
        for j, (text, reason, n) in enumerate(answers, start=first_index):
            rows.append({"iteration": iteration, "rollout_id": f"{iteration}:{q['question_id']}:{j}",
                         "question_id": q["question_id"], "policy": policy.name, "sample_index": j, "response": text,
                         "n_tokens": int(n), "finish_reason": reason})
    tokens["seconds"] = time.perf_counter() - t0
    tokens["tokens_per_second"] = tokens["generated"] / max(tokens["seconds"], 1e-9)
    return rows, tokens
