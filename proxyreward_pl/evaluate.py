"""`proxyreward evaluate --iteration N`: the eval meta-questions answered by iteration N's policy (N = 0:
the base model; greedy decoding unless `evaluation.samples` > 1, then optionally one greedy answer more, stored
with sample_index -1 and scored as `greedy_*`), judged by the evaluation judge (`evaluation.judge`; default:
the training judge). When that is another judge, the training judge scores the same answers too, as
`training_judge_*`: a policy that learns to please its own judge shows as a gap between the two. ProxyQA-style
accuracy and precision per question land in `evaluations`, the answers in `eval_rollouts`.
"""

from __future__ import annotations

import dataclasses

import polars as pl

from . import prompts
from .asking import Tokens, ask, policy_of, resolve_engine, sample
from .console import say
from .engines import make_engine
from .errors import ProxyRewardError
from .judging import judge_name, proxy_requests, proxy_rows, rated_request, rated_rows, statements_by_question
from .lake import Lake
from .lake.runs import record_run
from .settings import EngineSettings, EvalSettings, JudgeSettings, RolloutSettings, TinySettings


def evaluate(
    iteration: int,
    policy: EngineSettings = EngineSettings(),
    judge: JudgeSettings = JudgeSettings(),
    evaluation: EvalSettings = EvalSettings(),
    sampling: RolloutSettings = RolloutSettings(),
    tiny: TinySettings = TinySettings(),
    force: bool = False,
    lake: str | None = None,
) -> dict:
    """Answer the eval meta-questions with iteration N's policy and judge the answers with the proxy judge (the
    evaluation judge, and the training judge too when they differ).

    Args:
        iteration: whose policy (0 = the base model).
        policy: the engine that answers.
        judge: the training judge (the proxy judge of `score`).
        evaluation: decoding (greedy by default), samples, LLM-judge win rate against iteration 0, and the
            evaluation judge (evaluation.judge; default: the training judge).
        sampling: only served_adapter_prefix is read (how an OpenAI-compatible server names adapters).
        tiny: the tiny model, when a model is `tiny`.
        force: evaluate even a stale policy (see `proxyreward lake lineage`).
        lake: lake root (default: PROXYREWARD_LAKE or the repository's datalake/).
    """
    from .dataset import ensure_seeded

    lk = Lake(lake)
    ensure_seeded(lk)
    policy, judge = resolve_engine(policy, tiny), resolve_engine(judge, tiny)
    eval_judge = resolve_engine(evaluation.judge, tiny) if evaluation.judge is not None else judge
    judges = [("eval", eval_judge)] + ([("training", judge)] if eval_judge != judge else [])
    served = policy_of(lk, iteration, policy, sampling.served_adapter_prefix)
    policy, name = served.engine, served.name
    questions = lk.sql("SELECT question_id, text, context FROM meta_questions WHERE split = 'eval' "
                       "ORDER BY question_id").to_dicts()
    if not questions:
        raise ProxyRewardError("the lake has no eval meta-questions")
    greedy = evaluation.samples == 1
    config = {"policy": dataclasses.asdict(policy), "judge": dataclasses.asdict(judge),
              "evaluation": dataclasses.asdict(evaluation)}
    cache = lk.root / "cache" / "engine.sqlite"
    with record_run(lk, iteration, "evaluate", config, force=force) as metrics:
        gen = make_engine(policy, cache_path=cache)
        try:
            rows, gen_tokens = sample(gen, questions, iteration=iteration, k=evaluation.samples,
                                      temperature=0.0 if greedy else evaluation.temperature, top_p=1.0,
                                      max_new_tokens=evaluation.max_new_tokens, seed=0, policy=served,
                                      label=f"eval answers of iteration {iteration}")
            if evaluation.greedy and not greedy:
                extra, more = sample(gen, questions, iteration=iteration, k=1, temperature=0.0, top_p=1.0,
                                     max_new_tokens=evaluation.max_new_tokens, seed=0, policy=served,
                                     label=f"greedy eval answers of iteration {iteration}", first_index=-1)
                rows += extra
                gen_tokens["generated"] += more["generated"]
        finally:
            gen.close()
        statements = statements_by_question(lk)
        by_id = {q["question_id"]: q for q in questions}
        tokens, scores, names = Tokens(), [], {}
        for role, settings in judges:
            engine = make_engine(settings, cache_path=cache)
            try:
                names[role] = judge_name(engine, settings)
                scores += judged(iteration, rows, statements, by_id, engine, settings, tokens, role, names[role])
                if role == "eval" and evaluation.llm_judge_win_rate and iteration > 0:
                    scores += win_rate_rows(lk, iteration, [r for r in rows if r["sample_index"] >= 0], by_id,
                                            engine, settings, tokens, names[role])
            finally:
                engine.close()
        frame = pl.DataFrame(scores).filter(pl.col("status") == "ok")
        evaluations = (frame.group_by("question_id", "reward").agg(pl.col("score").mean(), pl.col("judge").first(),
                                                                  pl.col("prompt_hash").first())
                       .with_columns(iteration=pl.lit(iteration), policy=pl.lit(name)).sort("question_id", "reward"))
        with lk.transaction() as tx:
            tx.replace("eval_rollouts", rows, iteration=iteration)
            tx.replace("evaluations", evaluations, iteration=iteration)
        means = {r["reward"]: r["score"] for r in evaluations.group_by("reward").agg(pl.col("score").mean()).to_dicts()}
        metrics.update(policy=name, questions=len(questions), answers=len(rows), failed=len(scores) - frame.height,
                       mean_tokens=sum(r["n_tokens"] for r in rows) / len(rows), **{f"eval_{k}": v
                                                                                     for k, v in means.items()},
                       judge=names["eval"], training_judge=names.get("training", names["eval"]),
                       **{f"judge_{k}": v for k, v in tokens.metrics().items()},
                       generated_tokens=gen_tokens["generated"], truncated_prompts=gen_tokens["truncated_prompts"])
    nan = float("nan")
    line = (f"iteration {iteration} ({name}): eval proxy accuracy {means.get('proxy_accuracy', nan):.3f}, "
            f"precision {means.get('proxy_precision', nan):.3f} over {len(questions)} questions")
    if "training" in names:
        line += (f"; by the training judge {means.get('training_judge_proxy_accuracy', nan):.3f}, "
                 f"{means.get('training_judge_proxy_precision', nan):.3f}")
    say(line)
    return dict(metrics)


def judged(iteration: int, rows: list[dict], statements: dict, questions: dict, engine, judge: JudgeSettings,
           tokens: Tokens, role: str, name: str) -> list[dict]:
    """Proxy scores of the eval answers by one judge: `greedy_` for the extra greedy answers, `training_judge_`
    for the training judge's when the evaluation judge is another."""
    outcomes = ask(engine, proxy_requests(rows, statements, questions, judge), judge.parse_retries, tokens,
                   f"judging eval answers of iteration {iteration} ({role} judge)")
    _, scores = proxy_rows(iteration, rows, statements, outcomes, name, prompts.template_hash("proxy_judge"),
                           judge.mode)
    extra_greedy = {r["rollout_id"] for r in rows if r["sample_index"] < 0}
    prefix = "training_judge_" if role == "training" else ""
    for sc in scores:
        sc["reward"] = prefix + ("greedy_" if sc["rollout_id"] in extra_greedy else "") + sc["reward"]
    return scores


def win_rate_rows(lk: Lake, iteration: int, rows: list[dict], questions: dict, engine, judge: JudgeSettings,
                  tokens: Tokens, name: str) -> list[dict]:
    """`llm_judge_win_vs_0` per answer: 1 if the LLM judge rates it above iteration 0's answer, 0.5 on a tie."""
    base = {r["question_id"]: r for r in lk.read("eval_rollouts", 0).filter(pl.col("sample_index") == 0).to_dicts()}
    if not base:
        raise ProxyRewardError("the LLM-judge win rate compares with iteration 0: evaluate iteration 0 first")
    both = [r for r in rows if r["question_id"] in base] + list(base.values())
    asked = [rated_request("llm_judge", r, questions[r["question_id"]], judge) for r in both]
    outcomes = ask(engine, asked, judge.parse_retries, tokens, "LLM-judge comparison with iteration 0")
    rated = {r["rollout_id"]: s for r, s in zip(both, rated_rows(iteration, both, outcomes, "llm_judge", ""),
                                               strict=True)}
    out = []
    for r in rows:
        mine, theirs = rated[r["rollout_id"]], rated.get(base[r["question_id"]]["rollout_id"])
        ok = mine["status"] == "ok" and theirs is not None and theirs["status"] == "ok"
        win = None if not ok else 1.0 if mine["score"] > theirs["score"] else 0.5 if mine["score"] == theirs[
            "score"] else 0.0
        out.append({"question_id": r["question_id"], "rollout_id": r["rollout_id"], "reward": "llm_judge_win_vs_0",
                    "score": win, "status": "ok" if ok else "failed", "judge": name,
                    "prompt_hash": mine["prompt_hash"]})
    return out
