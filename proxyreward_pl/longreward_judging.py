"""LongReward's judging pipeline (Zhang et al. 2024, arXiv 2410.21252), for `score --reward longreward`: the
judge requests of each step and the `scores` rows they become. The scores themselves are pure functions in
`rewards/longreward.py`; retrieval is `retrieval.py`.

Two rounds of requests, every one sent through the engine, so answered from its persistent cache first:

- round 1, per response: helpfulness (1 call) and logicality (1), few-shot, from the question and the answer
  alone; the answer's factual statements (1). Per question with a context: the question-relevant information
  of each part of the context (`completeness_chunk_tokens`, ~4k tokens; 1 call per part, shared by all the
  question's answers).
- round 2, per response: the support of each statement (1 call per statement), judged against the `top_k`
  passages of `chunk_tokens` tokens retrieved for it from the context, or by the judge's own knowledge when
  the question has no context; completeness (1), against the parts' information (or, without a context, by
  how fully the answer covers the question).

A response so costs 4 + its statements calls, plus the context's parts shared among its question's answers.
A re-run asks the same requests again (the same statements come back from the cache and retrieval is
deterministic), so it sends only what is still missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import prompts, retrieval
from .asking import Asked, Outcome, Tokens, answer_form, ask, structured_kwargs
from .console import say
from .engines import Engine, Request, Result
from .rewards.longreward import (
    DIMENSIONS,
    SUPPORT,
    SUPPORT_CHOICES,
    expected_value,
    faithfulness_score,
    information_regex,
    information_schema,
    longreward_score,
    parse_information,
    parse_rating,
    parse_statements,
    parse_support,
    rating_regex,
    rating_schema,
    statements_regex,
    statements_schema,
    support_regex,
    support_schema,
)
from .settings import JudgeSettings, LongRewardSettings

RATINGS = {str(i): float(i) for i in range(11)}
TEMPLATES = {"helpfulness": ("helpfulness",), "logicality": ("logicality",),
             "faithfulness": ("faithfulness_statements", "faithfulness_support"),
             "completeness": ("completeness_extract", "completeness")}


@dataclass
class Context:
    """A question's context cut for the two uses: passages to retrieve, parts to extract information from."""

    text: str
    passages: list[retrieval.Chunk]
    parts: list[retrieval.Chunk]
    index: retrieval.Index | None = field(default=None, repr=False)

    def span(self, part: retrieval.Chunk) -> str:
        n = max(len(self.text), 1)
        return f"{round(100 * part.start / n)}% - {round(100 * part.end / n)}%"


def _messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _text_format(form: str) -> str:
    return "json" if form == "json_schema" else "lines"


def _rating(template: str, key: tuple, judge: JudgeSettings, **variables) -> Asked:
    """A 0-10 rating, analysis first (generate), or the expected rating under the judge's probabilities (logprob)."""
    if judge.mode == "logprob":
        prompt = prompts.render(template, answer_format="rating", **variables)
        req = Request(_messages(prompt), max_tokens=1, choices=tuple(RATINGS))
        return Asked(req, lambda res: (expected_value(res.choice_logprobs or {}, RATINGS), "expected rating"), key)
    form = answer_form(judge)
    prompt = prompts.render(template, answer_format=_text_format(form), **variables)
    req = Request(_messages(prompt), max_tokens=judge.max_tokens,
                  **structured_kwargs(form, rating_regex(), rating_schema()))
    return Asked(req, lambda res: parse_rating(res.texts[0]), key)


def _generated(template: str, key: tuple, judge: JudgeSettings, regex: str, schema: dict, parse, **variables) -> Asked:
    """A step whose answer is text to read (statements, information), in every judge mode."""
    form = answer_form(judge)
    prompt = prompts.render(template, answer_format=_text_format(form), **variables)
    req = Request(_messages(prompt), max_tokens=judge.max_tokens, **structured_kwargs(form, regex, schema))
    return Asked(req, lambda res: parse(res.texts[0]), key)


def _support(key: tuple, statement: str, passages: list[str], judge: JudgeSettings) -> Asked:
    """(support value 0-1, label or 'expected support') of one statement."""
    if judge.mode == "logprob":
        prompt = prompts.render("faithfulness_support", statement=statement, passages=passages, answer_format="support")
        req = Request(_messages(prompt), max_tokens=1, choices=tuple(SUPPORT_CHOICES))
        return Asked(req, lambda res: (expected_value(res.choice_logprobs or {}, SUPPORT_CHOICES), "expected"), key)
    form = answer_form(judge)
    prompt = prompts.render("faithfulness_support", statement=statement, passages=passages,
                            answer_format=_text_format(form))
    req = Request(_messages(prompt), max_tokens=judge.max_tokens,
                  **structured_kwargs(form, support_regex(), support_schema()))

    def parse(res: Result) -> tuple[float, str]:
        label, _ = parse_support(res.texts[0])
        return SUPPORT[label], label

    return Asked(req, parse, key)


def contexts_of(questions: dict[str, dict], settings: LongRewardSettings) -> dict[str, Context]:
    return {qid: Context(q["context"], retrieval.split_chunks(q["context"], settings.chunk_tokens),
                         retrieval.split_chunks(q["context"], settings.completeness_chunk_tokens))
            for qid, q in questions.items() if q.get("context")}


def longreward_scores(engine: Engine, iteration: int, rollouts: list[dict], questions: dict[str, dict],
                      judge: JudgeSettings, settings: LongRewardSettings, tokens: Tokens,
                      judge_name: str) -> tuple[list[dict], dict]:
    """Judge every rollout on the four dimensions; returns its `scores` rows (the four and `longreward`) and the
    cost (judge calls per step and per response) for `runs.metrics`."""
    contexts = contexts_of({r["question_id"]: questions[r["question_id"]] for r in rollouts}, settings)
    kind = retrieval.resolve(settings.retrieval) if contexts else "none (no question has a context)"
    first = _first_round(rollouts, questions, contexts, judge, settings.max_statements)
    n_parts = len(first) - 3 * len(rollouts)
    say(f"longreward round 1: {len(first)} judge calls ({3 * len(rollouts)} for {len(rollouts)} responses, "
          f"{n_parts} for the context parts of {len(contexts)} questions)")
    out = ask(engine, first, judge.parse_retries, tokens, "LongReward round 1")
    second = _second_round(rollouts, questions, contexts, out, judge, settings, kind)
    n_support = sum(a.key[1] == "support" for a in second)
    say(f"longreward round 2: {len(second)} judge calls ({n_support} statements, "
          f"{len(second) - n_support} completeness ratings)")
    out.update(ask(engine, second, judge.parse_retries, tokens, "LongReward round 2"))

    rows = [row for r in rollouts for row in _rows(iteration, r, out, contexts.get(r["question_id"]), kind, settings,
                                                    judge_name)]
    calls = {"helpfulness": len(rollouts), "logicality": len(rollouts), "statements": len(rollouts),
             "context_parts": n_parts, "support": n_support, "completeness": len(second) - n_support}
    cost = {"judge_calls": calls, "judge_calls_per_response": (len(first) + len(second)) / len(rollouts),
            "statements_per_response": n_support / len(rollouts), "retrieval": kind}
    return rows, cost


def _first_round(rollouts: list[dict], questions: dict[str, dict], contexts: dict[str, Context],
                 judge: JudgeSettings, limit: int) -> list[Asked]:
    """Per response: helpfulness, logicality, its statements; per question with a context: each part's information."""
    first: list[Asked] = []
    for r in rollouts:
        q, rid = questions[r["question_id"]], r["rollout_id"]
        for dim in ("helpfulness", "logicality"):
            first.append(_rating(dim, (rid, dim), judge, question=q["text"], response=r["response"]))
        first.append(_generated("faithfulness_statements", (rid, "statements"), judge, statements_regex(limit),
                                statements_schema(limit), lambda text: parse_statements(text, limit),
                                question=q["text"], response=r["response"], has_context=r["question_id"] in contexts,
                                limit=limit))
    for qid, ctx in sorted(contexts.items()):
        for i, part in enumerate(ctx.parts):
            first.append(_generated("completeness_extract", (qid, "part", i), judge, information_regex(),
                                    information_schema(), parse_information, question=questions[qid]["text"],
                                    chunk=part.text))
    return first


def _second_round(rollouts: list[dict], questions: dict[str, dict], contexts: dict[str, Context],
                  out: dict[tuple, Outcome], judge: JudgeSettings, settings: LongRewardSettings,
                  kind: str) -> list[Asked]:
    """Per response: the support of each statement (against its retrieved passages), and completeness (when
    every part's information came back)."""
    missing = Outcome(error="not judged")
    second: list[Asked] = []
    for r in rollouts:
        q, rid, ctx = questions[r["question_id"]], r["rollout_id"], contexts.get(r["question_id"])
        statements = out.get((rid, "statements"), missing).value
        if statements:
            found = [[]] * len(statements)
            if ctx is not None:
                ctx.index = ctx.index or retrieval.Index(ctx.passages, kind)
                found = ctx.index.search(statements, settings.top_k)
            second += [_support((rid, "support", j), s, [c.text for c in hits], judge)
                       for j, (s, hits) in enumerate(zip(statements, found, strict=True))]
        infos = [out.get((r["question_id"], "part", i), missing) for i in range(len(ctx.parts))] if ctx else []
        if any(o.error for o in infos):
            continue  # completeness cannot be judged without every part's information; _rows says why
        parts = [{"span": ctx.span(p), "items": o.value} for p, o in zip(ctx.parts, infos, strict=True)] if ctx else []
        second.append(_rating("completeness", (rid, "completeness"), judge, question=q["text"],
                              response=r["response"], parts=parts))
    return second


def _hash(dimension: str) -> str:
    return "+".join(prompts.template_hash(t) for t in TEMPLATES[dimension])


def _rows(iteration: int, r: dict, out: dict[tuple, Outcome], ctx: Context | None, kind: str,
          settings: LongRewardSettings, judge_name: str) -> list[dict]:
    rid, missing = r["rollout_id"], Outcome(error="not judged")
    dims: dict[str, tuple[float | None, str]] = {}  # dimension -> (0-10 or None when failed, detail or error)
    for dim in ("helpfulness", "logicality"):
        o = out.get((rid, dim), missing)
        dims[dim] = (None, o.error) if o.error else o.value
    dims["faithfulness"] = _faithfulness(rid, out, ctx, kind, settings)
    parts = [out.get((r["question_id"], "part", i), missing) for i in range(len(ctx.parts))] if ctx else []
    bad = next((i for i, o in enumerate(parts) if o.error), None)
    o = out.get((rid, "completeness"), missing)
    if bad is not None:
        dims["completeness"] = (None, f"relevant information of context part {bad + 1}/{len(parts)}: "
                                      f"{parts[bad].error}")
    elif o.error:
        dims["completeness"] = (None, o.error)
    else:
        against = (f"against the information extracted from {len(parts)} context part(s) of "
                   f"{settings.completeness_chunk_tokens} tokens" if ctx else "against the question (no context)")
        dims["completeness"] = (o.value[0], f"{against}: {o.value[1]}")
    base = {"iteration": iteration, "rollout_id": rid, "question_id": r["question_id"], "judge": judge_name}
    rows = [{**base, "reward": f"longreward_{d}", "score": None if v is None else v / 10.0,
             "status": "failed" if v is None else "ok", "detail": detail, "prompt_hash": _hash(d)}
            for d, (v, detail) in dims.items()]
    errors = [f"{d}: {detail}" for d, (v, detail) in dims.items() if v is None]
    rows.append({**base, "reward": "longreward", "status": "failed" if errors else "ok",
                 "score": None if errors else longreward_score({d: v for d, (v, _) in dims.items()}),
                 "detail": "; ".join(errors) or None, "prompt_hash": "+".join(_hash(d) for d in DIMENSIONS)})
    return rows


def _faithfulness(rid: str, out: dict[tuple, Outcome], ctx: Context | None, kind: str,
                  settings: LongRewardSettings) -> tuple[float | None, str]:
    extracted = out.get((rid, "statements"), Outcome(error="not judged"))
    if extracted.error:
        return None, f"statements: {extracted.error}"
    statements = extracted.value
    judged = [out.get((rid, "support", j), Outcome(error="not judged")) for j in range(len(statements))]
    for j, o in enumerate(judged):
        if o.error:
            return None, f"statement {j + 1}/{len(statements)}: {o.error}"
    against = (f"against the context ({kind}, top {settings.top_k} of {len(ctx.passages)} passages of "
               f"{settings.chunk_tokens} tokens)" if ctx else "against the judge's own knowledge (no context)")
    supports = [o.value[0] for o in judged]
    listed = " | ".join(f"[{o.value[1] if o.value[1] in SUPPORT else f'{o.value[0]:.2f}'}] {s}"
                        for s, o in zip(statements, judged, strict=True))
    return faithfulness_score(supports), f"{len(statements)} statements {against}: {listed}".rstrip(": ")
