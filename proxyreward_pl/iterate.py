"""`proxyreward iterate` (and `make iterate`): whole ProxyReward cycles.

Iteration 0 evaluates the base model; each iteration N then runs rollout -> score -> select -> train ->
evaluate, every stage recorded in `runs`. The proxy reward is always scored (it is what eval reports); a
selection by another reward (llm_judge, longreward, length) scores that one too. After each evaluation the
loop checks itself for degeneration (`analysis/health.sql`) and warns. A re-run after a crash starts at the
first stage that has no finished run and redoes nothing finished. A lock refuses a second concurrent
`iterate` on the same lake. Engines are shared between the stages of one run (one vLLM start, not one per
stage).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator

import polars as pl

from . import tiny as tiny_models
from .engines import shared_engines
from .errors import ProxyRewardError
from .evaluate import evaluate as evaluate_stage
from .lake import Lake
from .rollout import rollout as rollout_stage
from .score import score as score_stage
from .select import select as select_stage
from .settings import (
    DataConfig,
    DPOSettings,
    EngineSettings,
    EvalSettings,
    JudgeSettings,
    LoraSettings,
    ModelSettings,
    OptimSettings,
    RolloutSettings,
    SelectSettings,
    TrainerSettings,
)
from .train import train as train_stage


@contextlib.contextmanager
def iterate_lock(lake: Lake) -> Iterator[None]:
    path = lake.root / ".iterate.lock"
    fh = open(path, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise ProxyRewardError(f"another `proxyreward iterate` is running on {lake.root} ({holder}); "
                               "wait for it or stop it first") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()}")
    fh.flush()
    try:
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def finished(lake: Lake, iteration: int, stage: str) -> bool:
    return lake.sql("SELECT count(*) FROM runs WHERE iteration = ? AND stage = ? AND status = 'finished'",
                    [iteration, stage]).item() > 0


def reward_family(reward: str) -> str:
    """The `score --reward` that produces a selection reward (proxy_precision -> proxy, ...)."""
    for family in ("proxy", "longreward", "llm_judge", "length"):
        if reward == family or reward.startswith(family + "_"):
            return family
    raise ProxyRewardError(f"selection.reward {reward!r} is not produced by any `score --reward`")


def health(lake: Lake) -> pl.DataFrame:
    """Per evaluated iteration: degeneration signs and their flags (SQL)."""
    return lake.run_sql_file("analysis/health")


def warn_if_degenerating(lake: Lake, iteration: int) -> str:
    rows = health(lake).filter(pl.col("iteration") == iteration).to_dicts()
    flags = rows[0]["flags"] if rows else ""
    if flags:
        print(f"[iterate] WARNING iteration {iteration}: {flags}", flush=True)
    return flags


def summary(lake: Lake) -> pl.DataFrame:
    """Per iteration: rollouts, mean proxy score, pairs, final train loss, eval accuracy (SQL)."""
    return lake.run_sql_file("analysis/iteration_summary")


def iterate(
    iterations: int = 2,
    policy: EngineSettings = EngineSettings(),
    sampling: RolloutSettings = RolloutSettings(),
    judge: JudgeSettings = JudgeSettings(),
    selection: SelectSettings = SelectSettings(),
    model: ModelSettings = ModelSettings(path="tiny"),
    lora: LoraSettings = LoraSettings(),
    dpo: DPOSettings = DPOSettings(),
    optim: OptimSettings = OptimSettings(),
    data: DataConfig = DataConfig(),
    trainer: TrainerSettings = TrainerSettings(),
    evaluation: EvalSettings = EvalSettings(),
    tiny: tiny_models.TinyModelConfig = tiny_models.TinyModelConfig(),
    report: bool = True,
    lake: str | None = None,
) -> pl.DataFrame:
    """Run ProxyReward iterations: evaluate the base, then rollout, score, select, train, evaluate per iteration.

    Args:
        iterations: how many iterations (after the base model's evaluation, iteration 0).
        policy: the engine that samples rollouts and eval answers.
        sampling: k, temperature, top_p, max_new_tokens, seed.
        judge: the proxy judge.
        selection: the pair selection.
        model: base weights for training (must be the policy's).
        lora: the adapter.
        dpo: loss and reference.
        optim: AdamW and schedule.
        data: tokenisation and batching.
        trainer: Lightning settings.
        evaluation: eval decoding.
        tiny: the tiny model, when a model is `tiny`.
        report: write the HTML report at the end.
        lake: lake root (default: PROXYREWARD_LAKE or the repository's datalake/).
    """
    from .dataset import ensure_seeded

    lk = Lake(lake)
    t0 = time.perf_counter()
    with iterate_lock(lk), shared_engines():
        ensure_seeded(lk)
        root = str(lk.root)
        family = reward_family(selection.reward)
        plan: list[tuple[int, str, Callable[[], object]]] = [
            (0, "evaluate", lambda: evaluate_stage(0, policy, judge, evaluation, sampling, tiny, root))]
        for n in range(1, iterations + 1):
            plan += [
                (n, "rollout", lambda n=n: rollout_stage(n, policy, sampling, tiny, root)),
                (n, "score:proxy", lambda n=n: score_stage(n, "proxy", judge, tiny, root)),
            ]
            if family != "proxy":
                plan.append((n, f"score:{family}", lambda n=n: score_stage(n, family, judge, tiny, root)))
            plan += [
                (n, "select", lambda n=n: select_stage(n, selection, root)),
                (n, "train", lambda n=n: train_stage(n, model, lora, dpo, optim, data, trainer, tiny, lake=root)),
                (n, "evaluate", lambda n=n: evaluate_stage(n, policy, judge, evaluation, sampling, tiny, root)),
            ]
        for n, stage, run in plan:
            if finished(lk, n, stage):
                print(f"[iterate] iteration {n} {stage}: done earlier, skipped")
                continue
            print(f"[iterate] iteration {n} {stage} ({time.perf_counter() - t0:.0f} s)", flush=True)
            run()
            if stage == "evaluate":
                warn_if_degenerating(lk, n)
    table = summary(lk)
    from .query import render

    print(f"\n[iterate] finished in {time.perf_counter() - t0:.0f} s\n" + render(table))
    print("\n[iterate] health (analysis/health.sql)\n" + render(health(lk)))
    if report:
        from .report import write_report

        path = write_report(lk)
        print(f"[iterate] report: {path}")
    return table
