"""`proxyreward score --iteration N --reward proxy|llm_judge|longreward|length`: judge an iteration's rollouts.

Every answered request is committed to the engine cache (`<lake>/cache/engine.sqlite`) the moment it
arrives, so a killed run loses nothing it paid for and its re-run sends only what is still missing;
a malformed answer is asked again (`judge.parse_retries`), and a rollout that still has no answer is
recorded with status 'failed' and the reason, never scored 0. At the end, one lake transaction replaces
this judge's `judgments` file and the reward's `scores` file of the iteration. `length` (the answer's token
count) asks no judge: it is the baseline that rewards saying more, whatever is said.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Literal

import polars as pl

from . import prompts
from . import tiny as tiny_models
from .asking import Asked, Outcome, Tokens, answer_form, ask, resolve_engine, structured_kwargs
from .engines import Engine, Request, Result, make_engine
from .errors import ProxyRewardError
from .lake import Lake
from .rewards import ParseError, proxy_scores
from .rewards.llm_judge import normalise_llm_judge, parse_rated, rated_regex, rated_schema
from .rewards.longreward import (
    DIMENSIONS,
    faithfulness_regex,
    faithfulness_schema,
    faithfulness_score,
    longreward_score,
    parse_faithfulness,
)
from .rewards.proxy import json_schema, lines_regex, parse_verdicts
from .runs import record_run
from .settings import JudgeSettings

Reward = Literal["proxy", "llm_judge", "longreward", "length"]


def _messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _rating_from_choices(res: Result, low: int, high: int) -> float:
    """Expected rating under the judge's probabilities of the numbers low..high (G-Eval style)."""
    lp = res.choice_logprobs or {}
    finite = {int(k): v for k, v in lp.items() if math.isfinite(v)}
    if not finite:
        raise ParseError("no probability on any rating")
    top = max(finite.values())
    weights = {k: math.exp(v - top) for k, v in finite.items()}
    return sum(k * w for k, w in weights.items()) / sum(weights.values())


# -- the three rewards: questions to ask, and rows to write -------------------------------------------
def proxy_questions(rollouts: list[dict], statements: dict[str, list[dict]], questions: dict[str, dict],
                    judge: JudgeSettings) -> list[Asked]:
    form = answer_form(judge)
    asked = []
    for r in rollouts:
        stmts = statements.get(r["question_id"], [])
        if not stmts:
            continue
        text = questions[r["question_id"]]["text"]
        if judge.mode == "logprob":
            for s in stmts:
                prompt = prompts.render("proxy_judge", question=text, response=r["response"],
                                        statements=[s["statement"]], answer_format="single")
                asked.append(Asked(Request(_messages(prompt), max_tokens=1, choices=("True", "False")),
                                   _true_false, (r["rollout_id"], s["statement_id"])))
        else:
            n = len(stmts)
            prompt = prompts.render("proxy_judge", question=text, response=r["response"],
                                    statements=[s["statement"] for s in stmts],
                                    answer_format="json" if form == "json_schema" else "lines")
            req = Request(_messages(prompt), max_tokens=judge.max_tokens,
                          **structured_kwargs(form, lines_regex(n), json_schema(n)))
            asked.append(Asked(req, lambda res, n=n: parse_verdicts(res.texts[0], n), (r["rollout_id"],)))
    return asked


def _true_false(res: Result) -> bool | None:
    lp = res.choice_logprobs or {}
    t, f = lp.get("True", -math.inf), lp.get("False", -math.inf)
    return None if not (math.isfinite(t) or math.isfinite(f)) else t > f


def proxy_rows(iteration: int, rollouts: list[dict], statements: dict[str, list[dict]], outcomes: dict,
               judge_name: str, prompt_hash: str, mode: str) -> tuple[list[dict], list[dict]]:
    judgments, scores = [], []
    for r in rollouts:
        stmts = statements.get(r["question_id"], [])
        base = {"iteration": iteration, "rollout_id": r["rollout_id"], "question_id": r["question_id"],
                "judge": judge_name}
        if not stmts:
            for reward in ("proxy_accuracy", "proxy_precision"):
                scores.append({**base, "reward": reward, "score": None, "status": "failed",
                               "detail": "the meta-question has no proxy statements"})
            continue
        if mode == "logprob":
            per = [outcomes.get((r["rollout_id"], s["statement_id"]), Outcome(error="not judged")) for s in stmts]
            predicted = [o.value for o in per]
            errors = [o.error for o in per if o.error]
        else:
            o = outcomes.get((r["rollout_id"],), Outcome(error="not judged"))
            predicted = o.value if o.value is not None else [None] * len(stmts)
            errors = [o.error] if o.error else []
        failed = bool(errors)
        for s, p in zip(stmts, predicted, strict=True):
            judgments.append({**{k: base[k] for k in ("iteration", "rollout_id", "judge")},
                              "statement_id": s["statement_id"], "predicted": None if failed else p,
                              "status": "failed" if failed else ("unknown" if p is None else "ok"),
                              "prompt_hash": prompt_hash, "detail": errors[0] if failed else None})
        sc = None if failed else proxy_scores([s["answer"] for s in stmts], predicted)
        for reward, field in (("proxy_accuracy", "accuracy"), ("proxy_precision", "precision")):
            scores.append({**base, "reward": reward, "score": None if failed else float(sc[field]),
                           "status": "failed" if failed else "ok",
                           "detail": errors[0] if failed else f"answered {sc['answered']}/{len(stmts)}"})
    return judgments, scores


def length_rows(iteration: int, rollouts: list[dict]) -> list[dict]:
    """The length baseline: score = the answer's token count."""
    return [{"iteration": iteration, "rollout_id": r["rollout_id"], "question_id": r["question_id"], "judge": "length",
             "reward": "length", "score": float(r["n_tokens"]), "status": "ok", "detail": None} for r in rollouts]


RATED = {"llm_judge": (1, 10), "helpfulness": (0, 10), "logicality": (0, 10), "completeness": (0, 10)}


def rated_question(template: str, rollout: dict, question: dict, judge: JudgeSettings) -> Asked:
    form = answer_form(judge)
    low, high = RATED.get(template, (0, 10))
    variables = {"question": question["text"], "response": rollout["response"], "context": question.get("context")}
    if judge.mode == "logprob":
        prompt = prompts.render(template, answer_format="rating", **variables)
        req = Request(_messages(prompt), max_tokens=1, choices=tuple(str(i) for i in range(low, high + 1)))
        return Asked(req, lambda res: (_rating_from_choices(res, low, high), "expected rating"),
                     (rollout["rollout_id"], template))
    fmt = "json" if form == "json_schema" else "lines"
    prompt = prompts.render(template, answer_format=fmt, **variables)
    if template == "faithfulness":
        req = Request(_messages(prompt), max_tokens=judge.max_tokens,
                      **structured_kwargs(form, faithfulness_regex(), faithfulness_schema()))

        def parse(res: Result) -> tuple[float, str]:
            items = parse_faithfulness(res.texts[0])
            return faithfulness_score(items), f"{len(items)} statements"

        return Asked(req, parse, (rollout["rollout_id"], template))
    req = Request(_messages(prompt), max_tokens=judge.max_tokens,
                  **structured_kwargs(form, rated_regex(low, high), rated_schema(low, high)))
    return Asked(req, lambda res: parse_rated(res.texts[0], low, high), (rollout["rollout_id"], template))


def rated_rows(iteration: int, rollouts: list[dict], outcomes: dict, reward: str, judge_name: str) -> list[dict]:
    rows = []
    for r in rollouts:
        base = {"iteration": iteration, "rollout_id": r["rollout_id"], "question_id": r["question_id"],
                "judge": judge_name}
        if reward == "llm_judge":
            o = outcomes[(r["rollout_id"], "llm_judge")]
            rows.append({**base, "reward": "llm_judge", "status": "failed" if o.error else "ok",
                         "score": None if o.error else normalise_llm_judge(o.value[0]),
                         "detail": o.error or o.value[1]})
            continue
        dims = {d: outcomes[(r["rollout_id"], d)] for d in DIMENSIONS}
        for d, o in dims.items():
            rows.append({**base, "reward": f"longreward_{d}", "status": "failed" if o.error else "ok",
                         "score": None if o.error else o.value[0] / 10.0, "detail": o.error or o.value[1]})
        errors = [f"{d}: {o.error}" for d, o in dims.items() if o.error]
        rows.append({**base, "reward": "longreward", "status": "failed" if errors else "ok",
                     "score": None if errors else longreward_score({d: o.value[0] for d, o in dims.items()}),
                     "detail": "; ".join(errors) or None})
    return rows


# -- the stage ------------------------------------------------------------------------------------------
def judge_name(engine: Engine, judge: JudgeSettings) -> str:
    return f"{engine.identity}|{judge.mode}"


def _slug(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def score(
    iteration: int,
    reward: Reward = "proxy",
    judge: JudgeSettings = JudgeSettings(),
    tiny: tiny_models.TinyModelConfig = tiny_models.TinyModelConfig(),
    lake: str | None = None,
) -> dict:
    """Judge the rollouts of an iteration and write judgments and scores.

    Args:
        iteration: whose rollouts to judge.
        reward: proxy (proxy_accuracy and proxy_precision), llm_judge, longreward (and its four dimensions), or
            length (no judge: the answer's token count, a baseline).
        judge: the judge engine and how it is asked (--judge.engine, --judge.model, --judge.base_url,
            --judge.api_key_env, --judge.max_concurrency, --judge.mode, ...).
        tiny: the tiny model, when judge.model is `tiny`.
        lake: lake root (default: PROXYREWARD_LAKE or the repository's datalake/).
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
        with record_run(lk, iteration, "score:length", {"reward": reward}) as metrics:
            rows = length_rows(iteration, rollouts)
            lk.write("scores", rows, iteration=iteration, name="length", replace_partition=False)
            metrics.update(rollouts=len(rows), scores={"length": {"mean": sum(r["score"] for r in rows) / len(rows),
                                                                   "failed": 0}})
        print(f"iteration {iteration}: length mean {metrics['scores']['length']['mean']:.1f} tokens")
        return dict(metrics)
    judge = resolve_engine(judge, tiny)
    engine = make_engine(judge, cache_path=lk.root / "cache" / "engine.sqlite")
    name = judge_name(engine, judge)
    config = {"reward": reward, "judge": dataclasses.asdict(judge)}
    tokens = Tokens()
    with record_run(lk, iteration, f"score:{reward}", config) as metrics:
        try:
            if reward == "proxy":
                statements: dict[str, list[dict]] = {}
                for s in lk.sql("SELECT * FROM proxy_questions ORDER BY question_id, position").to_dicts():
                    statements.setdefault(s["question_id"], []).append(s)
                asked = proxy_questions(rollouts, statements, questions, judge)
                outcomes = ask(engine, asked, judge.parse_retries, tokens, f"judging {len(rollouts)} rollouts")
                judgments, scores = proxy_rows(iteration, rollouts, statements, outcomes, name,
                                               prompts.template_hash("proxy_judge"), judge.mode)
            else:
                templates = ["llm_judge"] if reward == "llm_judge" else list(DIMENSIONS)
                asked = [rated_question(t, r, questions[r["question_id"]], judge) for r in rollouts for t in templates]
                outcomes = ask(engine, asked, judge.parse_retries, tokens, f"judging {len(rollouts)} rollouts")
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
        metrics.update(rollouts=len(rollouts), requests=len(asked), sent=tokens.sent, cached=tokens.cached,
                       prompt_tokens=tokens.prompt, completion_tokens=tokens.completion, judge=name,
                       scores={r["reward"]: {"mean": r["mean"], "failed": r["failed"]} for r in summary.to_dicts()})
    for row in summary.to_dicts():
        mean = "n/a" if row["mean"] is None else f"{row['mean']:.3f}"
        print(f"iteration {iteration}: {row['reward']} mean {mean}, {row['failed']} failed")
    print(f"{len(asked)} judge requests: {tokens.sent} sent, {tokens.cached} from cache; "
          f"{tokens.prompt} prompt + {tokens.completion} completion tokens")
    return dict(metrics)
