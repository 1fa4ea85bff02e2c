"""A real OpenAI-compatible HTTP generator on 127.0.0.1 for `proxyreward dataset` tests.

It answers question-generation prompts from a script keyed by (domain, batch) and statement-generation
prompts by keywords in the question: `unbalanced` (all true), `echo` (one statement repeats the question),
`short` (too few statements), `garbled` (malformed JSON the first time it is asked), `misled` (the answers of
statements 5 and 8 planted wrong). Everything else gets a valid, balanced set, with an importance per
statement when the prompt asks for one. A closed-book check of a statement (`--verify`) is answered with
the statement's true answer. Faults of the judge server (slow replies, 500s, ...) apply as well.
"""

from __future__ import annotations

import json
import re

from tests.servers.judge import JudgeServer

_DOMAIN = re.compile(r"different open-ended\s+questions about (.+?)\. Each", re.S)
_BATCH = re.compile(r"\(batch (\d+):")
_QUESTION = re.compile(r"^Question: (.+)$", re.M)
_CHECKED = re.compile(r"^Statement to check: Fact number (\d+) ", re.M)
PLANTED = (5, 8)
"""Statements whose answer a `misled` question's generation gets wrong."""


def truth(i: int, false: int = 3) -> bool:
    return i >= false


def valid_statements(question: str, n: int = 12, false: int = 3) -> list[dict]:
    topic = " ".join(re.findall(r"[A-Za-z]+", question)[-3:])
    return [{"statement": f"Fact number {i} about {topic} is stated here plainly for checking.",
             "answer": truth(i, false), "importance": 1 + i % 3} for i in range(n)]


class GeneratorServer(JudgeServer):
    def __init__(self, script: dict[tuple[str, int], list[str]] | None = None, **kw):
        super().__init__(**kw)
        self.script = script or {}
        self.garbled_seen: set[str] = set()

    def _answer(self, prompt: str, body: dict, fault: str | None):
        as_json = body.get("response_format", {}).get("type") == "json_schema"
        domain = _DOMAIN.search(prompt)
        if domain:
            d, batch = domain.group(1), int(_BATCH.search(prompt).group(1))
            questions = self.script.get((d, batch), [
                f"Explain how {d} topic {batch}-{i} {'abcdefghij'[i % 10] * 3} works and why it matters in depth?"
                for i in range(3)])
            if as_json:
                return json.dumps({"questions": questions}), None
            return "".join(f"Q: {q}\n" for q in questions), None
        checked = _CHECKED.search(prompt)
        if checked:
            answer = truth(int(checked.group(1)))
            return (json.dumps({"answer": answer}) if as_json else ("True" if answer else "False")), None
        question = _QUESTION.search(prompt).group(1).strip()
        items = valid_statements(question)
        weights = "importance" in prompt
        if not weights:
            items = [{k: v for k, v in s.items() if k != "importance"} for s in items]
        if "misled" in question:
            items = [{**s, "answer": not s["answer"]} if i in PLANTED else s for i, s in enumerate(items)]
        if "unbalanced" in question:
            items = [{**s, "answer": True} for s in items]
        if "echo" in question:
            items[0] = {"statement": question, "answer": True}
        if "short" in question:
            items = items[:5]
        text = json.dumps({"statements": items})
        if "garbled" in question and question not in self.garbled_seen:
            self.garbled_seen.add(question)
            return text[:-10], None
        if as_json:
            return text, None
        lines = []
        for s in items:
            importance = f" [{s['importance']}]" if weights else ""
            lines.append(f"- {'True' if s['answer'] else 'False'}{importance}: {s['statement']}\n")
        return "".join(lines), None
