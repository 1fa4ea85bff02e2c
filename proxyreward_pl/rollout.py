"""`proxyreward rollout --iteration N`: k answers per train meta-question from the policy of iteration N-1.

Iteration 1 samples the base model; iteration N > 1 the base plus iteration N-1's adapter (a LoRA request
for vLLM, the adapter folder for hf; an OpenAI-compatible server gets it loaded at run time, named
`<prefix>N-1-<hash of its weights>`).
Answers are cached as they arrive, so a killed run resumes without sampling anything twice; the
partition is written in one transaction at the end.
"""

from __future__ import annotations

import dataclasses

from .asking import policy_of, resolve_engine, sample
from .console import say
from .engines import make_engine
from .errors import ProxyRewardError
from .lake import Lake
from .lake.runs import record_run
from .settings import EngineSettings, RolloutSettings, TinySettings


def rollout(
    iteration: int,
    policy: EngineSettings = EngineSettings(),
    sampling: RolloutSettings = RolloutSettings(),
    tiny: TinySettings = TinySettings(),
    force: bool = False,
    lake: str | None = None,
) -> dict:
    """Sample k answers per train meta-question from the policy of iteration N-1.

    Args:
        iteration: the iteration these rollouts belong to (>= 1).
        policy: the engine that samples (--policy.engine hf|vllm|openai, --policy.model, ...).
        sampling: k, temperature, top_p, max_new_tokens, seed, max_questions.
        tiny: the tiny model, when policy.model is `tiny`.
        force: run even when iteration N-1's policy is stale (see `proxyreward lake lineage`).
        lake: lake root (default: PROXYREWARD_LAKE or the repository's datalake/).
    """
    if iteration < 1:
        raise ProxyRewardError("rollouts start at iteration 1 (iteration 0 is the base model's evaluation)")
    from .dataset import ensure_seeded

    lk = Lake(lake)
    ensure_seeded(lk)
    policy = resolve_engine(policy, tiny)
    served = policy_of(lk, iteration - 1, policy, sampling.served_adapter_prefix)
    policy, name = served.engine, served.name
    questions = lk.sql("SELECT question_id, text, context FROM meta_questions WHERE split = 'train' "
                       "ORDER BY question_id")
    if sampling.max_questions:
        questions = questions.head(sampling.max_questions)
    if questions.is_empty():
        raise ProxyRewardError("the lake has no train meta-questions; run `proxyreward seed` or import some")
    engine = make_engine(policy, cache_path=lk.root / "cache" / "engine.sqlite")
    config = {"policy": dataclasses.asdict(policy), "sampling": dataclasses.asdict(sampling),
              "adapter": served.adapter}
    with record_run(lk, iteration, "rollout", config, force=force) as metrics:
        try:
            rows, tokens = sample(engine, questions.to_dicts(), iteration=iteration, k=sampling.k,
                                  temperature=sampling.temperature, top_p=sampling.top_p,
                                  max_new_tokens=sampling.max_new_tokens, seed=sampling.seed + iteration,
                                  policy=served, label=f"rollouts of iteration {iteration}")
        finally:
            engine.close()
        lk.write("rollouts", rows, iteration=iteration)
        lengths = [r["n_tokens"] for r in rows]
        metrics.update(rollouts=len(rows), questions=questions.height, policy=name, **tokens,
                       mean_tokens=sum(lengths) / len(lengths),
                       hit_token_limit=sum(r["finish_reason"] == "length" for r in rows))
    speed = f"{tokens['tokens_per_second']:.0f} tokens/s" if tokens["sent"] else "all from the results cache"
    say(f"iteration {iteration}: {len(rows)} rollouts from {name} ({questions.height} questions x {sampling.k}), "
        f"{speed}, mean length {metrics['mean_tokens']:.0f} tokens")
    return dict(metrics)
