"""Judging, shared by the stages that judge answers (score, evaluate): the requests a judge is asked for each
reward (from the prompt templates) and the `judgments`/`scores` rows its answers become. Rewards themselves are
pure functions in `rewards/`; this module turns them into requests and rows. LongReward's multi-step pipeline
has a module of its own, `longreward_judging`."""

from __future__ import annotations

import math

from . import prompts
from .asking import Asked, Outcome, answer_form, structured_kwargs
from .engines import Engine, Request, Result
from .lake import Lake
from .rewards import ParseError, proxy_scores
from .rewards.llm_judge import normalise_llm_judge, parse_rated, rated_regex, rated_schema
from .rewards.proxy import CHOICES, json_schema, lines_regex, parse_verdicts, verdict_of_choices
from .settings import JudgeSettings


def statements_by_question(lake: Lake) -> dict[str, list[dict]]:
    """The lake's proxy statements per meta-question, in their numbered order."""
    out: dict[str, list[dict]] = {}
    for s in lake.sql("SELECT * FROM proxy_questions ORDER BY question_id, position").to_dicts():
        out.setdefault(s["question_id"], []).append(s)
    return out


def judge_name(engine: Engine, judge: JudgeSettings) -> str:
    return f"{engine.identity}|{judge.mode}"


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


def proxy_requests(rollouts: list[dict], statements: dict[str, list[dict]], questions: dict[str, dict],
                    judge: JudgeSettings) -> list[Asked]:
    form = answer_form(judge)
    asked = []
    for r in rollouts:
        stmts = statements.get(r["question_id"], [])
        if not stmts:
            continue
        text = questions[r["question_id"]]["text"]
        if judge.mode == "logprob":  # the statement comes last: a response's requests share all before it
            for s in stmts:
                prompt = prompts.render("proxy_judge", question=text, response=r["response"],
                                        statements=[s["statement"]], answer_format="single")
                asked.append(Asked(Request(_messages(prompt), max_tokens=1, choices=CHOICES),
                                   lambda res: verdict_of_choices(res.choice_logprobs or {}),
                                   (r["rollout_id"], s["statement_id"])))
        else:
            n = len(stmts)
            prompt = prompts.render("proxy_judge", question=text, response=r["response"],
                                    statements=[s["statement"] for s in stmts],
                                    answer_format="json" if form == "json_schema" else "lines")
            req = Request(_messages(prompt), max_tokens=judge.max_tokens,
                          **structured_kwargs(form, lines_regex(n), json_schema(n)))
            asked.append(Asked(req, lambda res, n=n: parse_verdicts(res.texts[0], n), (r["rollout_id"],)))
    return asked


PROXY_REWARDS = (("proxy_accuracy", "accuracy"), ("proxy_precision", "precision"),
                 ("proxy_weighted_accuracy", "weighted_accuracy"))


def proxy_rows(iteration: int, rollouts: list[dict], statements: dict[str, list[dict]], outcomes: dict,
               judge_name: str, prompt_hash: str, mode: str) -> tuple[list[dict], list[dict]]:
    judgments, scores = [], []
    for r in rollouts:
        stmts = statements.get(r["question_id"], [])
        base = {"iteration": iteration, "rollout_id": r["rollout_id"], "question_id": r["question_id"],
                "judge": judge_name, "prompt_hash": prompt_hash}
        if not stmts:
            for reward, _ in PROXY_REWARDS:
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
            judgments.append({**{k: base[k] for k in ("iteration", "rollout_id", "judge", "prompt_hash")},
                              "statement_id": s["statement_id"], "predicted": None if failed else p,
                              "status": "failed" if failed else ("unknown" if p is None else "ok"),
                              "detail": errors[0] if failed else None})
        sc = None if failed else proxy_scores([s["answer"] for s in stmts], predicted,
                                              [s.get("weight") or 1.0 for s in stmts])
        for reward, field in PROXY_REWARDS:
            scores.append({**base, "reward": reward, "score": None if failed else float(sc[field]),
                           "status": "failed" if failed else "ok",
                           "detail": errors[0] if failed else f"answered {sc['answered']}/{len(stmts)}"})
    return judgments, scores


def length_rows(iteration: int, rollouts: list[dict]) -> list[dict]:
    """The length baseline: score = the answer's token count."""
    return [{"iteration": iteration, "rollout_id": r["rollout_id"], "question_id": r["question_id"], "judge": "length",
             "reward": "length", "score": float(r["n_tokens"]), "status": "ok", "detail": None} for r in rollouts]


RATED = {"llm_judge": (1, 10)}


def rated_request(template: str, rollout: dict, question: dict, judge: JudgeSettings) -> Asked:
    """One overall rating of a response (LLM-as-a-Judge); LongReward's requests are in `longreward_judging`."""
    form = answer_form(judge)
    low, high = RATED[template]
    variables = {"question": question["text"], "response": rollout["response"]}
    if judge.mode == "logprob":
        prompt = prompts.render(template, answer_format="rating", **variables)
        req = Request(_messages(prompt), max_tokens=1, choices=tuple(str(i) for i in range(low, high + 1)))
        return Asked(req, lambda res: (_rating_from_choices(res, low, high), "expected rating"),
                     (rollout["rollout_id"], template))
    fmt = "json" if form == "json_schema" else "lines"
    prompt = prompts.render(template, answer_format=fmt, **variables)
    req = Request(_messages(prompt), max_tokens=judge.max_tokens,
                  **structured_kwargs(form, rated_regex(low, high), rated_schema(low, high)))
    return Asked(req, lambda res: parse_rated(res.texts[0], low, high), (rollout["rollout_id"], template))


def rated_rows(iteration: int, rollouts: list[dict], outcomes: dict, reward: str, judge_name: str) -> list[dict]:
    """Score rows of one rating per response (llm_judge), with the template's hash."""
    prompt_hash = prompts.template_hash(reward)
    rows = []
    for r in rollouts:
        o = outcomes[(r["rollout_id"], reward)]
        rows.append({"iteration": iteration, "rollout_id": r["rollout_id"], "question_id": r["question_id"],
                     "judge": judge_name, "reward": reward, "status": "failed" if o.error else "ok",
                     "score": None if o.error else normalise_llm_judge(o.value[0]), "detail": o.error or o.value[1],
                     "prompt_hash": prompt_hash})
    return rows
