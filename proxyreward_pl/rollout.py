"""`proxyreward rollout --iteration N`: k answers per train meta-question from the policy of iteration N-1.

Iteration 1 samples the base model; iteration N > 1 the base plus iteration N-1's adapter (a LoRA request
for vLLM, the adapter folder for hf, the served name `<prefix>N-1` for an OpenAI-compatible server).
Answers are cached as they arrive, so a killed run resumes without sampling anything twice; the
partition is written in one transaction at the end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
import zlib

from . import tiny as tiny_models
from .asking import Progress, resolve_engine
from .engines import Request, Result, make_engine
from .errors import ProxyRewardError
from .lake import Lake
from .runs import record_run
from .settings import EngineSettings, RolloutSettings


def policy_of(lake: Lake, iteration: int, engine: EngineSettings, prefix: str = "iteration-") -> tuple[str | None, str]:
    """(adapter to pass to the engine, policy name for the rows) of iteration N's policy (0 = base)."""
    if iteration == 0:
        return None, f"{engine.model}+base"
    path = lake.adapter_dir(iteration)
    weights = path / "adapter_model.safetensors"
    if not weights.exists():
        raise ProxyRewardError(f"iteration {iteration}'s policy needs its adapter in {path}; train iteration "
                               f"{iteration} first")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    adapter = f"{prefix}{iteration}" if engine.engine == "openai" else str(path)
    return adapter, f"{engine.model}+adapter:{digest}"


def sample(engine, questions: list[dict], *, iteration: int, k: int, temperature: float, top_p: float,
           max_new_tokens: int, seed: int, adapter: str | None, policy: str, label: str) -> tuple[list[dict], dict]:
    """k answers to every question: rollout rows (in question order) and token counts."""
    requests = [Request([{"role": "user", "content": q["text"]}], max_tokens=max_new_tokens, temperature=temperature,
                        top_p=top_p, n=k, adapter=adapter, adapter_version=policy if adapter else None,
                        seed=seed * 1_000_003 + zlib.crc32(q["question_id"].encode()), tag=q["question_id"])
                for q in questions]
    got: dict[str, Result] = {}
    progress = Progress(len(requests), label)
    tokens = {"generated": 0, "sent": 0, "cached": 0}
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
        for j, (text, reason, n) in enumerate(zip(res.texts, res.finish_reasons, res.completion_tokens, strict=True)):
            rows.append({"iteration": iteration, "rollout_id": f"{iteration}:{q['question_id']}:{j}",
                         "question_id": q["question_id"], "policy": policy, "sample_index": j, "response": text,
                         "n_tokens": int(n), "finish_reason": reason})
    tokens["seconds"] = time.perf_counter() - t0
    tokens["tokens_per_second"] = tokens["generated"] / max(tokens["seconds"], 1e-9)
    return rows, tokens


def rollout(
    iteration: int,
    policy: EngineSettings = EngineSettings(),
    sampling: RolloutSettings = RolloutSettings(),
    tiny: tiny_models.TinyModelConfig = tiny_models.TinyModelConfig(),
    lake: str | None = None,
) -> dict:
    """Sample k answers per train meta-question from the policy of iteration N-1.

    Args:
        iteration: the iteration these rollouts belong to (>= 1).
        policy: the engine that samples (--policy.engine hf|vllm|openai, --policy.model, ...).
        sampling: k, temperature, top_p, max_new_tokens, seed, max_questions.
        tiny: the tiny model, when policy.model is `tiny`.
        lake: lake root (default: PROXYREWARD_LAKE or the repository's datalake/).
    """
    if iteration < 1:
        raise ProxyRewardError("rollouts start at iteration 1 (iteration 0 is the base model's evaluation)")
    from .dataset import ensure_seeded

    lk = Lake(lake)
    ensure_seeded(lk)
    policy = resolve_engine(policy, tiny)
    adapter, name = policy_of(lk, iteration - 1, policy, sampling.served_adapter_prefix)
    questions = lk.sql("SELECT question_id, text FROM meta_questions WHERE split = 'train' ORDER BY question_id")
    if sampling.max_questions:
        questions = questions.head(sampling.max_questions)
    if questions.is_empty():
        raise ProxyRewardError("the lake has no train meta-questions; run `proxyreward seed` or import some")
    engine = make_engine(policy, cache_path=lk.root / "cache" / "engine.sqlite")
    config = {"policy": dataclasses.asdict(policy), "sampling": dataclasses.asdict(sampling), "adapter": adapter}
    with record_run(lk, iteration, "rollout", config) as metrics:
        try:
            rows, tokens = sample(engine, questions.to_dicts(), iteration=iteration, k=sampling.k,
                                  temperature=sampling.temperature, top_p=sampling.top_p,
                                  max_new_tokens=sampling.max_new_tokens, seed=sampling.seed + iteration,
                                  adapter=adapter, policy=name, label=f"rollouts of iteration {iteration}")
        finally:
            engine.close()
        lk.write("rollouts", rows, iteration=iteration)
        lengths = [r["n_tokens"] for r in rows]
        metrics.update(rollouts=len(rows), questions=questions.height, policy=name, **tokens,
                       mean_tokens=sum(lengths) / len(lengths),
                       hit_token_limit=sum(r["finish_reason"] == "length" for r in rows))
    print(f"iteration {iteration}: {len(rows)} rollouts from {name} ({questions.height} questions x {sampling.k}), "
          f"{tokens['tokens_per_second']:.0f} tokens/s, mean length {metrics['mean_tokens']:.0f} tokens")
    return dict(metrics)
