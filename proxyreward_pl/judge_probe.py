"""`proxyreward judge probe`: how well does a judge read, before anyone pays for a run?

The lake's own proxy statements are put to the judge beside responses built to settle them. Each picked
meta-question's statements are dealt into three classes, and each class gets one response:
  True     a response that asserts the statements (the statements themselves, as prose);
  False    a response that says they are not so ("It is not true that ...");
  Unknown  a response about something else (another domain's question, answered).
The judge is asked exactly as `score` asks it (`judging.proxy_requests`, its prompt, mode and answer
form, through the engine cache, so a second probe of the same judge costs nothing), and the report is its
3-way accuracy, overall and per class, with what it answered instead.

A judge that cannot say Unknown (`--judge.mode logprob` decides True or False) gets 0 on that class: that is
a finding about the judge, reported as it is. The phrasings live here rather than in `prompts/`, whose files
are the tiny model's tokenizer corpus (a new file there would rebuild every cached tiny model).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Literal

from . import prompts
from .asking import Tokens, ask, resolve_engine
from .engines import make_engine
from .errors import ProxyRewardError
from .judging import judge_name, proxy_requests, proxy_rows, statements_by_question
from .lake import Lake
from .settings import JudgeSettings, TinySettings

CLASSES = ("True", "False", "Unknown")
# A sentence that starts with one of these words reads on after "It is not true that" in lower case; any
# other first word (a name, a date, an acronym) keeps its capital.
_FUNCTION_WORDS = frozenset(
    "a about after all although an as at because before both by during each every for from if in its many "
    "most on one only over since some that the their there these this those through to under unlike when "
    "while with without".split())
OTHER_SENTENCES = 4


def deny(statement: str) -> str:
    """The statement, said not to be so."""
    clause = statement.strip().rstrip(".")
    first = clause.split(" ", 1)[0]
    if first.lower() in _FUNCTION_WORDS:
        clause = clause[0].lower() + clause[1:]
    return f"It is not true that {clause}."


def assert_all(statements: list[str]) -> str:
    return " ".join(s.strip() if s.strip().endswith(".") else s.strip() + "." for s in statements)


def pick_questions(questions: list[dict], n: int) -> list[dict]:
    """n meta-questions, one domain after another (by id within a domain), so every domain is probed."""
    by_domain: dict[str, list[dict]] = {}
    for q in sorted(questions, key=lambda q: q["question_id"]):
        by_domain.setdefault(q["domain"], []).append(q)
    order = []
    for i in range(max(map(len, by_domain.values()), default=0)):
        order += [by_domain[d][i] for d in sorted(by_domain) if i < len(by_domain[d])]
    return order[:n]


def build_items(picked: list[dict], statements: dict[str, list[dict]]) -> list[dict]:
    """One probe item per (question, class): its response and the statements it settles, with their
    expected verdict. A question's statements are dealt into the classes by position (rotated per
    question, so no class always gets the first statement)."""
    items = []
    for i, q in enumerate(picked):
        stmts = statements.get(q["question_id"], [])
        other = next((o for o in picked[i + 1:] + picked[:i] if o["domain"] != q["domain"]), None)
        for c, cls in enumerate(CLASSES):
            mine = [s for j, s in enumerate(stmts) if (j + i) % len(CLASSES) == c]
            if not mine or (cls == "Unknown" and other is None):
                continue
            if cls == "True":
                response = assert_all([s["statement"] for s in mine])
            elif cls == "False":
                response = " ".join(deny(s["statement"]) for s in mine)
            else:
                response = assert_all([s["statement"] for s in statements[other["question_id"]][:OTHER_SENTENCES]])
            items.append({"question_id": q["question_id"], "text": q["text"], "expected": cls,
                          "response": response, "statements": mine})
    return items


def judge_items(items: list[dict], judge: JudgeSettings, engine) -> tuple[list[dict], Tokens]:
    """Ask the judge about every item as `score` would; one row per statement: expected and answered."""
    keyed = {f"probe:{it['question_id']}:{it['expected']}": it for it in items}
    rollouts = [{"rollout_id": k, "question_id": k, "response": it["response"]} for k, it in keyed.items()]
    questions = {k: {"text": it["text"]} for k, it in keyed.items()}
    statements = {k: it["statements"] for k, it in keyed.items()}
    tokens = Tokens()
    outcomes = ask(engine, proxy_requests(rollouts, statements, questions, judge), judge.parse_retries, tokens,
                   f"probing the judge on {sum(len(s) for s in statements.values())} statements")
    judgments, _ = proxy_rows(0, rollouts, statements, outcomes, judge_name(engine, judge),
                              prompts.template_hash("proxy_judge"), judge.mode)
    answered = {True: "True", False: "False", None: "Unknown"}
    rows = [{"rollout_id": j["rollout_id"], "statement_id": j["statement_id"],
             "expected": keyed[j["rollout_id"]]["expected"],
             "answered": "failed" if j["status"] == "failed" else answered[j["predicted"]], "detail": j["detail"]}
            for j in judgments]
    return rows, tokens


def summarise(rows: list[dict]) -> dict:
    """Accuracy overall and per expected class, and what the judge answered in each class."""
    per_class = {}
    for cls in CLASSES:
        mine = [r for r in rows if r["expected"] == cls]
        answered = Counter(r["answered"] for r in mine)
        per_class[cls] = {"n": len(mine), "accuracy": answered[cls] / len(mine) if mine else None,
                          "answered": {a: answered[a] for a in (*CLASSES, "failed")}}
    accuracies = [c["accuracy"] for c in per_class.values() if c["accuracy"] is not None]
    return {"statements": len(rows), "accuracy": sum(r["answered"] == r["expected"] for r in rows) / max(len(rows), 1),
            "balanced_accuracy": sum(accuracies) / len(accuracies) if accuracies else None, "per_class": per_class}


def render(report: dict) -> str:
    lines = [f"judge {report['judge']}: 3-way accuracy {report['accuracy']:.3f} over {report['statements']} "
             f"statements (balanced {report['balanced_accuracy']:.3f}; chance 0.333)",
             f"{'expected':<9} {'n':>5} {'accuracy':>9}   answered True / False / Unknown / failed"]
    for cls, c in report["per_class"].items():
        acc = "n/a" if c["accuracy"] is None else f"{c['accuracy']:.3f}"
        a = c["answered"]
        lines.append(f"{cls:<9} {c['n']:>5} {acc:>9}   {a['True']} / {a['False']} / {a['Unknown']} / {a['failed']}")
    return "\n".join(lines)


def probe(
    judge: JudgeSettings = JudgeSettings(),
    tiny: TinySettings = TinySettings(),
    questions: int = 16,
    split: Literal["all", "train", "eval"] = "all",
    out: str | None = None,
    lake: str | None = None,
) -> dict:
    """Probe a judge on responses built from the lake's proxy statements: asserted (True), denied (False),
    or not mentioned (Unknown); print its 3-way accuracy overall and per class.

    Args:
        judge: the judge, as `score` takes it (--judge.engine, --judge.model, --judge.mode, ...).
        tiny: the tiny model, when judge.model is `tiny`.
        questions: how many meta-questions to draw statements from (domains in turn).
        split: which meta-questions: all, train or eval.
        out: also write the report (with every statement's verdict) as JSON here.
        lake: lake root (default: PROXYREWARD_LAKE or the repository's datalake/).
    """
    if questions < 1:
        raise ProxyRewardError(f"--questions: must be >= 1, got {questions}")
    from .dataset import ensure_seeded

    lk = Lake(lake)
    ensure_seeded(lk)
    pool = lk.read("meta_questions").to_dicts()
    pool = [q for q in pool if split == "all" or q["split"] == split]
    statements = statements_by_question(lk)
    items = build_items(pick_questions([q for q in pool if statements.get(q["question_id"])], questions), statements)
    if not items:
        raise ProxyRewardError(f"no meta-question with proxy statements in the lake's {split} split to probe with")
    shown = f"{judge.engine}:{judge.model}|{judge.mode}"  # as configured (`smollm2`, not its cache folder)
    judge = resolve_engine(judge, tiny)
    engine = make_engine(judge, cache_path=lk.root / "cache" / "engine.sqlite")
    try:
        rows, tokens = judge_items(items, judge, engine)
    finally:
        engine.close()
    report = {"judge": shown, "mode": judge.mode, **summarise(rows),
              "questions": len({it["question_id"] for it in items}), "sent": tokens.sent, "cached": tokens.cached}
    print(render(report))
    print(f"{tokens.sent} judge requests sent, {tokens.cached} from cache")
    if out:
        Path(out).write_text(json.dumps({**report, "verdicts": rows}, indent=2))
    return report
