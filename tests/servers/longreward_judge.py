"""A rule-based LongReward judge: a real OpenAI-compatible HTTP server on 127.0.0.1 (the plumbing, faults and
logs of `JudgeServer`) that answers each LongReward step by rule, as an exact judge would:

- helpfulness, logicality: a fixed rating per dimension (or a test's function of the response);
- factual statements: the sentences of the response;
- support of a statement: Fully supported when one of the passages shown contains it (case and spacing aside),
  else No support; with no passages (no context), Fully supported when it is in `knowledge`;
- information relevant to the question in a part of the context: the part's sentences that share a word of
  six letters or more with the question;
- completeness: 10 x the share of the listed information items the response contains (the fixed rating when
  the question has no context).

A `malformed` fault spoils the ratings' answers (the other steps answer as usual).

Every prompt it answered is kept in `prompts` as (step, prompt), so tests can read what was asked; a prompt of
no LongReward step (step "other": a policy's prompt, say) is answered as `JudgeServer` answers it.
"""

from __future__ import annotations

import json
import re

from tests.servers.judge import JudgeServer, _logprobs

_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_BLOCK = {name: re.compile(rf"<{name}>\n(.*?)\n</{name}>", re.DOTALL) for name in ("response", "context", "statement")}
_PASSAGE = re.compile(r"^\[Passage \d+\]\n", re.MULTILINE)
_ITEM = re.compile(r"^\d+\. (.+)$", re.MULTILINE)
_QUESTION = re.compile(r"^Question: (.+)$", re.MULTILINE)
STEPS = {"how HELPFUL": "helpfulness", "the LOGICALITY": "logicality",
         "factual statements of this answer": "statements", "Now judge this statement": "support",
         "Extract all the information": "information",
         "the COMPLETENESS": "completeness"}


def norm(text: str) -> str:
    return " ".join(text.lower().replace("‹", "<").split()).rstrip(".")


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text.strip()) if s.strip()]


class LongRewardJudgeServer(JudgeServer):
    def __init__(self, ratings: dict | None = None, knowledge: set[str] = frozenset(), **kw):
        super().__init__(**kw)
        self.ratings = {"helpfulness": 7, "logicality": 7, "completeness": 7, **(ratings or {})}
        self.knowledge = {norm(s) for s in knowledge}
        self.prompts: list[tuple[str, str]] = []

    def asked(self, step: str) -> list[str]:
        return [p for s, p in self.prompts if s == step]

    def _answer(self, prompt: str, body: dict, fault: str | None) -> tuple[str, dict | None]:
        step = next((s for marker, s in STEPS.items() if marker in prompt), "other")
        with self.lock:
            self.prompts.append((step, prompt))
        if step == "other":  # a policy's prompt, or another judge's: answered as JudgeServer does
            return super()._answer(prompt, body, fault)
        block = {name: (rx.search(prompt) or [None, ""])[1] for name, rx in _BLOCK.items()}
        as_json = body.get("response_format", {}).get("type") == "json_schema"
        logprobs = body.get("logprobs") not in (None, False)
        if step in ("helpfulness", "logicality", "completeness"):
            rating = self.ratings[step] if step != "completeness" else self._coverage(block)
            if callable(rating):  # a rule of the test's own, on the response
                rating = rating(block["response"])
            if logprobs:
                return str(round(rating)), _logprobs([(str(round(rating)), -0.05), ("0", -4.0)])
            if as_json:
                text = json.dumps({"analysis": "by rule", "rating": rating})
                return (text[:-3] if fault == "malformed" else text), None
            return ("Analysis: by rule\nRating: [[?]]" if fault == "malformed"
                    else f"Analysis: by rule\nRating: [[{rating:g}]]\n"), None
        if step == "statements":
            found = sentences(block["response"])
            if as_json:
                return json.dumps({"statements": found}), None
            return "".join(f"<statement>{s}</statement>\n" for s in found) or "No factual statements.\n", None
        if step == "support":
            label = self._support(block)
            if logprobs:
                word = label.split()[0]
                return word, _logprobs([(word, -0.05)] + [(w, -5.0) for w in ("Fully", "Partially", "No") if w != word])
            if as_json:
                return json.dumps({"analysis": "by rule", "support": label}), None
            return f"Analysis: by rule\nSupport: [[{label}]]\n", None
        question = _QUESTION.findall(prompt)[-1]
        words = {w for w in re.findall(r"\w+", question.lower()) if len(w) >= 6}
        relevant = [s for s in sentences(block["context"]) if words & set(re.findall(r"\w+", s.lower()))]
        if as_json:
            return json.dumps({"information": relevant}), None
        return "".join(f"{i}. {s}\n" for i, s in enumerate(relevant, 1)) or "No relevant information.\n", None

    def _support(self, block: dict) -> str:
        statement = norm(block["statement"])
        passages = [norm(p) for p in _PASSAGE.split(block["context"]) if p.strip()]
        if not passages:
            return "Fully supported" if statement in self.knowledge else "No support"
        return "Fully supported" if any(statement in p for p in passages) else "No support"

    def _coverage(self, block: dict) -> float:
        items = _ITEM.findall(block["context"])
        if not items:
            return self.ratings["completeness"]
        response = norm(block["response"])
        return 10 * sum(norm(i) in response for i in items) / len(items)
