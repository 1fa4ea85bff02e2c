"""The proxy-QA reward (ProxyReward): how many of a question's proxy statements the judge, reading only
the response, decides the way the dataset says.

Choices the paper leaves open, and ours:
- Unknown counts as wrong for `accuracy` (a response that does not say a fact earns nothing for it), and is
  left out of `precision` (correct among the statements the judge could decide). With nothing decided,
  precision is 0, not undefined, so a silent answer never looks precise.
- The judge decides all of a response's statements in one request (`generate`, the paper's setting) or
  one statement at a time (`logprob`): the most probable of True, False and Unknown as the next token.
  Both can say Unknown, so precision means the same in both modes.
- Statements may weigh differently (Rubrics as Rewards, RLCF): `weighted_accuracy` is the share of the
  total weight the judge decides right. With every weight 1 (the default) it equals `accuracy`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

from .parsing import ParseError, is_json, json_answer

VERDICTS = {"true": True, "false": False, "unknown": None}
CHOICES = ("True", "False", "Unknown")
"""What the logprob judge compares, as next-token continuations of the single-statement prompt."""
_LINE = re.compile(r"^\s*(\d+)\s*[:.)-]\s*\**\s*(true|false|unknown)\b", re.IGNORECASE | re.MULTILINE)


def proxy_scores(expected: Sequence[bool], predicted: Sequence[bool | None],
                 weights: Sequence[float] | None = None) -> dict[str, float | int]:
    """accuracy = correct / all statements; precision = correct / decided (0 if none); weighted_accuracy =
    weight of the correct ones / all weight (weights default to 1); answered = decided."""
    if len(expected) != len(predicted):
        raise ValueError(f"{len(expected)} expected answers but {len(predicted)} predictions")
    weights = [1.0] * len(expected) if weights is None else list(weights)
    if len(weights) != len(expected):
        raise ValueError(f"{len(expected)} expected answers but {len(weights)} weights")
    if any(w <= 0 for w in weights):
        raise ValueError(f"statement weights must be > 0, got {min(weights)}")
    decided = [(e, p) for e, p in zip(expected, predicted, strict=True) if p is not None]
    correct = sum(e == p for e, p in decided)
    right_weight = sum(w for e, p, w in zip(expected, predicted, weights, strict=True) if p is not None and e == p)
    return {
        "accuracy": correct / len(expected) if expected else 0.0,
        "precision": correct / len(decided) if decided else 0.0,
        "weighted_accuracy": right_weight / sum(weights) if expected else 0.0,
        "answered": len(decided),
        "correct": correct,
    }


def verdict_of_choices(logprobs: Mapping[str, float]) -> bool | None:
    """The verdict with the highest log-probability among True / False / Unknown (None: Unknown, also when the
    best two tie). ParseError when the judge gave none of them any probability."""
    finite = {c: v for c, v in logprobs.items() if math.isfinite(v)}
    if not finite:
        raise ParseError(f"no probability on any of {', '.join(logprobs) or 'the choices'}")
    best = max(finite.values())
    top = [c for c, v in finite.items() if v == best]
    return VERDICTS[top[0].lower()] if len(top) == 1 else None


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
