"""`proxyreward score --iteration N --reward proxy|llm_judge|longreward|length`: judge an iteration's rollouts.

Every answered request is committed to the engine cache (`<lake>/cache/engine.sqlite`) the moment it
arrives, so a killed run loses nothing it paid for and its re-run sends only what is still missing;
a malformed answer is asked again (`judge.parse_retries`), and a rollout that still has no answer is
recorded with status 'failed' and the reason, never scored 0. At the end, one lake transaction replaces
this judge's `judgments` file and the reward's `scores` file of the iteration. `length` (the answer's token
count) asks no judge: it is the baseline that rewards saying more, whatever is said. `longreward` asks in two
rounds, several calls per answer (`longreward_judging`); their count is in the run's metrics.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Literal

import polars as pl

from . import prompts
from .asking import Tokens, ask, resolve_engine
from .console import say
from .engines import make_engine
from .errors import ProxyRewardError
from .judging import (
    judge_name,
    length_rows,
    proxy_requests,
    proxy_rows,
    rated_request,
    rated_rows,
    statements_by_question,
)
from .lake import Lake
from .lake.runs import record_run
from .longreward_judging import longreward_scores
from .settings import JudgeSettings, LongRewardSettings, TinySettings

Reward = Literal["proxy", "llm_judge", "longreward", "length"]


def _slug(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def score(
    iteration: int,
    reward: Reward = "proxy",
    judge: JudgeSettings = JudgeSettings(),
    tiny: TinySettings = TinySettings(),
    force: bool = False,
    lake: str | None = None,
    longreward: LongRewardSettings = LongRewardSettings(),
) -> dict:
    """Judge the rollouts of an iteration and write judgments and scores.

    Args:
        iteration: whose rollouts to judge.
        reward: proxy (proxy_accuracy, proxy_precision, proxy_weighted_accuracy), llm_judge, longreward (and its
            four dimensions), or length (no judge: the answer's token count, a baseline).
        judge: the judge engine and how it is asked (--judge.engine, --judge.model, --judge.base_url,
            --judge.api_key_env, --judge.max_concurrency, --judge.mode, ...).
        tiny: the tiny model, when judge.model is `tiny`.
        force: judge even rollouts that are stale (see `proxyreward lake lineage`).
        lake: lake root (default: PROXYREWARD_LAKE or the repository's datalake/).
        longreward: LongReward's retrieval and chunking (--longreward.retrieval auto|embedding|bm25, ...).
    """
    lk = Lake(lake)
    rollouts = lk.read("rollouts", iteration).sort("rollout_id").to_dicts()
    if not rollouts:
        raise ProxyRewardError(f"no rollouts for iteration {iteration}; run `proxyreward rollout --iteration "
                               f"{iteration}` first")
    questions = {q["question_id"]: q for q in lk.read("meta_questions").to_dicts()}
    missing = sorted({r["question_id"] for r in rollouts} - set(questions))
    if missing:
        raise ProxyRewardError(f"rollouts of iteration {iteration} answer unknown meta-questions: {missing[:5]}")
    if reward == "length":
        with record_run(lk, iteration, "score", {"reward": reward}, reward="length", force=force) as metrics:
            rows = length_rows(iteration, rollouts)
            lk.write("scores", rows, iteration=iteration, name="length", replace_partition=False)
            metrics.update(rollouts=len(rows), scores={"length": {"mean": sum(r["score"] for r in rows) / len(rows),
                                                                   "failed": 0}})
        say(f"iteration {iteration}: length mean {metrics['scores']['length']['mean']:.1f} tokens")
        return dict(metrics)
    judge = resolve_engine(judge, tiny)
    engine = make_engine(judge, cache_path=lk.root / "cache" / "engine.sqlite")
    name = judge_name(engine, judge)
    config = {"reward": reward, "judge": dataclasses.asdict(judge)}
    if reward == "longreward":
        config["longreward"] = dataclasses.asdict(longreward)
    tokens, cost = Tokens(), {}
    with record_run(lk, iteration, "score", config, reward=reward, force=force) as metrics:
        try:
            if reward == "proxy":
                statements = statements_by_question(lk)
                asked = proxy_requests(rollouts, statements, questions, judge)
                outcomes = ask(engine, asked, judge.parse_retries, tokens, f"judging {len(rollouts)} rollouts")
                n_requests = len(asked)
                judgments, scores = proxy_rows(iteration, rollouts, statements, outcomes, name,
                                               prompts.template_hash("proxy_judge"), judge.mode)
            elif reward == "longreward":
                scores, cost = longreward_scores(engine, iteration, rollouts, questions, judge, longreward, tokens,
                                                 name)
                judgments, n_requests = [], sum(cost["judge_calls"].values())
            else:
                asked = [rated_request("llm_judge", r, questions[r["question_id"]], judge) for r in rollouts]
                outcomes = ask(engine, asked, judge.parse_retries, tokens, f"judging {len(rollouts)} rollouts")
                n_requests = len(asked)
                judgments, scores = [], rated_rows(iteration, rollouts, outcomes, reward, name)
        finally:
            engine.close()
        with lk.transaction() as tx:
            if judgments:
                tx.put("judgments", judgments, iteration=iteration, name=f"judge-{_slug(name)}")
            tx.put("scores", scores, iteration=iteration, name=reward)
        frame = pl.DataFrame(scores)
        summary = frame.group_by("reward").agg(pl.col("score").mean().alias("mean"),
                                               (pl.col("status") == "failed").sum().alias("failed")).sort("reward")
        metrics.update(rollouts=len(rollouts), requests=n_requests, **tokens.metrics(), **cost, judge=name,
                       scores={r["reward"]: {"mean": r["mean"], "failed": r["failed"]} for r in summary.to_dicts()})
    for row in summary.to_dicts():
        mean = "n/a" if row["mean"] is None else f"{row['mean']:.3f}"
        say(f"iteration {iteration}: {row['reward']} mean {mean}, {row['failed']} failed")
    if cost:
        say(f"LongReward: {cost['judge_calls_per_response']:.1f} judge calls per response "
              f"({cost['statements_per_response']:.1f} statements each; retrieval {cost['retrieval']})")
    say(f"{n_requests} judge requests: {tokens.sent} sent, {tokens.cached} from cache; "
          f"{tokens.prompt} prompt tokens ({tokens.prefilled} prefilled, {tokens.prompt_cached} from the prefix "
          f"cache) + {tokens.completion} completion tokens")
    return dict(metrics)
