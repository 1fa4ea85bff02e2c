"""The proxy-QA reward (ProxyReward): how many of a question's proxy statements the judge, reading only
the response, decides the way the dataset says.

Choices the paper leaves open, and ours:
- Unknown counts as wrong for `accuracy` (a response that does not say a fact earns nothing for it), and is
  left out of `precision` (correct among the statements the judge could decide). With nothing decided,
  precision is 0, not undefined, so a silent answer never looks precise.
- The judge decides all of a response's statements in one request (`generate`, the paper's setting) or
  one statement at a time from next-token probabilities (`logprob`), which cannot say Unknown.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .parsing import ParseError, is_json, json_answer

VERDICTS = {"true": True, "false": False, "unknown": None}
_LINE = re.compile(r"^\s*(\d+)\s*[:.)-]\s*\**\s*(true|false|unknown)\b", re.IGNORECASE | re.MULTILINE)


def proxy_scores(expected: Sequence[bool], predicted: Sequence[bool | None]) -> dict[str, float | int]:
    """accuracy = correct / all statements; precision = correct / decided (0 if none); answered = decided."""
    if len(expected) != len(predicted):
        raise ValueError(f"{len(expected)} expected answers but {len(predicted)} predictions")
    decided = [(e, p) for e, p in zip(expected, predicted, strict=True) if p is not None]
    correct = sum(e == p for e, p in decided)
    return {
        "accuracy": correct / len(expected) if expected else 0.0,
        "precision": correct / len(decided) if decided else 0.0,
        "answered": len(decided),
        "correct": correct,
    }


def parse_verdicts(text: str, n: int) -> list[bool | None]:
    """Verdicts for statements 1..n from a judge answer: a JSON object {"1": "True", ...} (or
    {"answers": {...}}) or lines "1: True". Raises ValueError when any statement is missing or malformed."""
    found: dict[int, bool | None] = {}
    obj = json_answer(text)
    if is_json(obj):
        if isinstance(obj, dict) and isinstance(obj.get("answers"), dict):
            obj = obj["answers"]
        if not isinstance(obj, dict):
            raise ParseError("expected a JSON object of verdicts")
        for k, v in obj.items():
            if str(k).strip().isdigit() and isinstance(v, str) and v.strip().lower() in VERDICTS:
                found[int(k)] = VERDICTS[v.strip().lower()]
    else:
        for m in _LINE.finditer(text):
            found.setdefault(int(m.group(1)), VERDICTS[m.group(2).lower()])
    missing = [i for i in range(1, n + 1) if i not in found]
    if missing:
        raise ParseError(f"no verdict for statement(s) {', '.join(map(str, missing[:5]))}"
                         + (" ..." if len(missing) > 5 else ""))
    return [found[i] for i in range(1, n + 1)]


def lines_regex(n: int) -> str:
    """The exact answer form for n statements, for a server's regex-constrained decoding (vLLM)."""
    return "".join(f"{i}: (True|False|Unknown)\\n" for i in range(1, n + 1))


def json_schema(n: int) -> dict:
    props = {str(i): {"type": "string", "enum": ["True", "False", "Unknown"]} for i in range(1, n + 1)}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}
