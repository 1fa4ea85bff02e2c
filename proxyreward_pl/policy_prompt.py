"""The policy's prompt for a meta-question (`prompts/policy.j2`), the same for rollout, evaluate and the DPO
pairs: the question text alone, or, when the question has a context, the context then the question.

A context that would not fit is cut to fit a budget of prompt tokens, counted as the policy reads them (its
chat template included): `policy.max_model_len - max_new_tokens` when sampling, `data.max_prompt_length` when
training. The cut drops the middle of the context and keeps its start and end, where long documents tend to
put what matters (the convention of LongBench); "[...]" marks it. A question without a context is never
changed, so datasets without contexts see exactly the prompts they always had.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

from . import prompts
from .errors import ProxyRewardError
from .settings import DataSettings, EngineSettings

CUT = "\n[...]\n"
CHARS_PER_TOKEN = 3
"""Without the policy's tokenizer (a served model known only by name), a token is taken to be 3 characters:
English BPE averages about 4, so the estimate errs on the short side."""


def render(question: str, context: str | None) -> str:
    return prompts.render_exact("policy", question=question, context=context or None)


@dataclass(frozen=True)
class Counter:
    """How the policy counts a prompt's tokens, and how a context is cut into and rebuilt from pieces."""

    count: Callable[[str], int]
    pieces: Callable[[str], list]
    join: Callable[[list], str]


@functools.lru_cache(maxsize=4)
def _tokenizer(model: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)


def counter(model: str, local: bool = True) -> Counter:
    """The policy's own tokenizer (chat template included); for a served model whose tokenizer is not on this
    machine (`local` False and the name does not load offline), the character estimate."""
    try:
        tok = _tokenizer(model)
    except (OSError, ValueError):
        if local:
            raise
        return Counter(lambda text: math.ceil(len(text) / CHARS_PER_TOKEN), list, "".join)

    def count(text: str) -> int:
        if getattr(tok, "chat_template", None):
            return len(tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                               tokenize=True, return_dict=False))
        return len(tok(text).input_ids)

    return Counter(count, lambda text: tok(text, add_special_tokens=False).input_ids,
                   lambda ids: tok.decode(ids, skip_special_tokens=True))


def fit(question: str, context: str | None, budget: int, tokens: Counter) -> tuple[str, bool]:
    """(prompt, whether its context was cut): the longest middle-cut context whose prompt fits `budget` tokens."""
    full = render(question, context)
    if not context or tokens.count(full) <= budget:
        return full, False
    pieces = tokens.pieces(context)

    def cut(n: int) -> str:
        head = n - n // 2
        return render(question, tokens.join(pieces[:head]) + CUT + tokens.join(pieces[len(pieces) - n // 2:]))

    lo, hi = 0, len(pieces) - 1  # the largest n whose prompt fits, by bisection
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if tokens.count(cut(mid)) <= budget:
            lo = mid
        else:
            hi = mid - 1
    if lo == 0 and tokens.count(cut(0)) > budget:
        raise ProxyRewardError(f"the question {question[:60]!r} does not fit the policy's prompt budget of {budget} "
                               "tokens even without its context")
    return cut(lo), True


def sampling_prompts(questions: list[dict], policy: EngineSettings, max_new_tokens: int) -> tuple[dict[str, str], int]:
    """{question_id: prompt} for sampling, and how many had their context cut. Tokenizers load only when some
    question has a context."""
    if not any(q.get("context") for q in questions):
        return {q["question_id"]: q["text"] for q in questions}, 0
    budget = policy.max_model_len - max_new_tokens
    if budget < 1:
        raise ProxyRewardError(f"policy.max_model_len ({policy.max_model_len}) leaves no room for a prompt "
                               f"beside max_new_tokens ({max_new_tokens})")
    tokens = counter(policy.model, local=policy.engine in ("hf", "vllm"))
    out, cut = {}, 0
    for q in questions:
        out[q["question_id"]], was_cut = fit(q["text"], q.get("context"), budget, tokens)
        cut += was_cut
    return out, cut


def training_prompts(rows: list[dict], model: str, data: DataSettings) -> int:
    """Put the policy's prompt (question, or context and question) in each pair row's `prompt`, cut to the
    training core's prompt budget; returns how many were cut. Rows carry `prompt` (the question) and `context`."""
    budget = data.max_prompt_length or data.max_length // 2
    tokens = counter(model) if any(r.get("context") for r in rows) else None
    cut = 0
    for r in rows:
        context = r.pop("context", None)
        if context:
            r["prompt"], was_cut = fit(r["prompt"], context, budget, tokens)
            cut += was_cut
    return cut
