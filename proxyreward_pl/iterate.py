"""`proxyreward iterate` (and `make iterate`): whole ProxyReward cycles.

Iteration 0 evaluates the base model; each iteration N then runs rollout -> score -> select -> train ->
evaluate, every stage recorded in `runs`. The proxy reward is always scored (it is what eval reports); a
selection by another reward (llm_judge, longreward, length), or a conflict filter by one, scores that one
too. After each evaluation the loop checks itself for degeneration (`analysis/health.sql`) and warns. A re-run
skips every stage whose finished run is current (`lake/lineage.py`) and redoes the others, saying why: after a
crash, the first stage without a finished run; after a change upstream (a retrained adapter, an edited prompt
template or selection SQL, re-imported questions), the stages built on it and everything downstream. A lock
refuses a second concurrent `iterate` on the same lake. Engines are shared between the stages of one run (one vLLM
start, not one per stage). This module sits above the stages: it is the only one that calls them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from .console import captured, say
from .engines import hand_back_engines, shared_engines
from .errors import ProxyRewardError
from .evaluate import evaluate as evaluate_stage
from .lake import Lake
from .lake.lineage import Key, Lineage, reward_family
from .rollout import rollout as rollout_stage
from .score import score as score_stage
from .select import select as select_stage
from .settings import (
    DataSettings,
    DPOSettings,
    EngineSettings,
    EvalSettings,
    JudgeSettings,
    LongRewardSettings,
    LoopSettings,
    LoraSettings,
    ModelSettings,
    OptimSettings,
    RolloutSettings,
    SelectSettings,
    TinySettings,
    TrainerSettings,
    TrainingSettings,
)
from .train import train_iteration


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


def health(lake: Lake) -> pl.DataFrame:
    """Per evaluated iteration: degeneration signs and their flags (SQL)."""
    return lake.run_sql_file("analysis/health")


def warn_if_degenerating(lake: Lake, iteration: int) -> str:
    rows = health(lake).filter(pl.col("iteration") == iteration).to_dicts()
    flags = rows[0]["flags"] if rows else ""
    if flags:
        say(f"[iterate] WARNING iteration {iteration}: {flags}")
    return flags


def summary(lake: Lake) -> pl.DataFrame:
    """Per iteration: rollouts, mean proxy score, pairs, final train loss, eval accuracy (SQL)."""
    return lake.run_sql_file("analysis/iteration_summary")


@dataclass(frozen=True)
class Step:
    """One stage run of the loop: its key in `runs` and how to run it on a lake."""

    iteration: int
    stage: str
    run: Callable[[Lake], object]
    reward: str | None = None

    def __str__(self) -> str:
        return f"iteration {self.iteration} {self.stage}{' ' + self.reward if self.reward else ''}"


def plan(s: LoopSettings, iterations: int) -> list[Step]:
    """Every stage of iterations 0..`iterations` in order (iteration 0: the base model's evaluation)."""
    def evaluate(n: int) -> Step:
        return Step(n, "evaluate", lambda lk: evaluate_stage(n, s.policy, s.judge, s.evaluation, s.sampling, s.tiny,
                                                             lake=str(lk.root)))

    def score(n: int, reward: str) -> Step:
        return Step(n, "score", lambda lk: score_stage(n, reward, s.judge, s.tiny, longreward=s.longreward,
                                                       lake=str(lk.root)), reward)

    wanted = [s.selection.reward] + ([s.selection.conflict_reward] if s.selection.conflict_reward else [])
    families = list(dict.fromkeys(f for f in map(reward_family, wanted) if f != "proxy"))
    steps = [evaluate(0)]
    for n in range(1, iterations + 1):
        steps += [Step(n, "rollout", lambda lk, n=n: rollout_stage(n, s.policy, s.sampling, s.tiny,
                                                                   lake=str(lk.root))),
                  score(n, "proxy")]
        steps += [score(n, family) for family in families]
        steps += [Step(n, "select", lambda lk, n=n: select_stage(n, s.selection, lake=str(lk.root))),
                  Step(n, "train", lambda lk, n=n: train_iteration(lk, n, s.training, s.tiny)),
                  evaluate(n)]
    return steps


def step_log(lake: Lake, step: Step) -> Path:
    """The log file of one step's output (vLLM, Lightning, transformers), unless --verbose."""
    name = f"{step.stage}-{step.reward}" if step.reward else step.stage
    return lake.root / "logs" / f"iteration={step.iteration}" / f"{name}.log"


def run_loop(lake: Lake, settings: LoopSettings, iterations: int = 2, report: bool = True, verbose: bool = False,
             tables: bool = True) -> pl.DataFrame:
    """Every step of `plan` without a finished run, in order, under the lake's iterate lock; then the summary
    (`tables`: print it and the health table). Each step's output goes to its log file unless `verbose`."""
    from .dataset import ensure_seeded

    t0 = time.perf_counter()
    if not verbose:
        say(f"[iterate] {lake.root}: each stage's full output goes to logs/iteration=N/<stage>.log there "
            "(--verbose shows it here)")
    with iterate_lock(lake), captured(lake.root / "logs" / "iterate.log", verbose), shared_engines():
        ensure_seeded(lake)
        for step in plan(settings, iterations):
            status = Lineage(lake).status(Key(step.stage, step.iteration, step.reward))
            if status.current:
                say(f"[iterate] {step}: done earlier, skipped")
                continue
            if status.run is not None:
                say(f"[iterate] {step}: stale ({'; '.join(status.reasons())}); redoing it")
            say(f"[iterate] {step} ({time.perf_counter() - t0:.0f} s)")
            if step.stage == "train":  # the training core runs in its own process: give it the accelerator
                handed = hand_back_engines()
                if handed:
                    say(f"[iterate] handed the accelerator back: {', '.join(handed)} (taken again on next use)")
            with captured(step_log(lake, step), verbose):
                step.run(lake)
            if step.stage == "evaluate":
                warn_if_degenerating(lake, step.iteration)
    table = summary(lake)
    from .query import render

    say(f"\n[iterate] finished in {time.perf_counter() - t0:.0f} s")
    if tables:
        say(render(table))
        say("\n[iterate] health (analysis/health.sql)\n" + render(health(lake)))
    if report:
        from .report import write_report

        say(f"[iterate] report: {write_report(lake)}")
    return table


def iterate(
    iterations: int = 2,
    policy: EngineSettings = EngineSettings(),
    sampling: RolloutSettings = RolloutSettings(),
    judge: JudgeSettings = JudgeSettings(),
    longreward: LongRewardSettings = LongRewardSettings(),
    selection: SelectSettings = SelectSettings(),
    model: ModelSettings = ModelSettings(path="tiny"),
    lora: LoraSettings = LoraSettings(),
    dpo: DPOSettings = DPOSettings(),
    optim: OptimSettings = OptimSettings(),
    data: DataSettings = DataSettings(),
    trainer: TrainerSettings = TrainerSettings(),
    evaluation: EvalSettings = EvalSettings(),
    tiny: TinySettings = TinySettings(),
    report: bool = True,
    verbose: bool = False,
    lake: str | None = None,
) -> pl.DataFrame:
    """Run ProxyReward iterations: evaluate the base, then rollout, score, select, train, evaluate per iteration.

    Args:
        iterations: how many iterations (after the base model's evaluation, iteration 0).
        policy: the engine that samples rollouts and eval answers.
        sampling: k, temperature, top_p, max_new_tokens, seed.
        judge: the proxy judge (and the judge of selection.reward).
        longreward: LongReward's retrieval and chunking, when selection.reward is longreward.
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
        verbose: show every stage's whole output (vLLM, Lightning, transformers) here, not only in its log file.
        lake: lake root (default: PROXYREWARD_LAKE or the repository's datalake/).
    """
    training = TrainingSettings(model=model, lora=lora, dpo=dpo, optim=optim, data=data, trainer=trainer)
    settings = LoopSettings(policy=policy, sampling=sampling, judge=judge, longreward=longreward, selection=selection,
                            training=training, evaluation=evaluation, tiny=tiny)
    return run_loop(Lake(lake), settings, iterations, report, verbose)
