"""LLM-as-a-Judge (the paper's baseline): one overall 1-10 score, normalised to [0, 1]."""

from __future__ import annotations

import re

from .parsing import ParseError, is_json, json_answer

_SCORE = re.compile(r"score\s*[:=]\s*\**\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_RATIONALE = re.compile(r"rationale\s*[:=]\s*(.*)", re.IGNORECASE)


def parse_rated(text: str, low: int, high: int) -> tuple[float, str]:
    """(score, rationale) from "Rationale: ...\\nScore: N" or {"rationale": ..., "score": N}."""
    obj = json_answer(text)
    if is_json(obj):
        score, rationale = obj.get("score") if isinstance(obj, dict) else None, str(obj.get("rationale", ""))
        if isinstance(score, bool) or not isinstance(score, int | float):
            raise ParseError("no numeric score")
    else:
        m = _SCORE.search(text)
        if not m:
            raise ParseError("no 'Score: N' line")
        score = float(m.group(1))
        r = _RATIONALE.search(text)
        rationale = r.group(1).strip() if r else ""
    if not low <= score <= high:
        raise ParseError(f"score {score} outside {low}-{high}")
    return float(score), rationale


def normalise_llm_judge(score: float) -> float:
    """1..10 -> 0..1."""
    return (score - 1.0) / 9.0


def rated_regex(low: int, high: int) -> str:
    numbers = "|".join(str(i) for i in range(high, low - 1, -1))
    return f"Rationale: [^\\n]{{1,300}}\\nScore: ({numbers})\\n"


def rated_schema(low: int, high: int) -> dict:
    return {"type": "object", "properties": {"rationale": {"type": "string"},
                                             "score": {"type": "integer", "minimum": low, "maximum": high}},
            "required": ["rationale", "score"], "additionalProperties": False}
