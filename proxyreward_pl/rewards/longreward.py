"""LongReward (Zhang et al. 2024): helpfulness, logicality, faithfulness, completeness, each judged by an LLM.

Our choices where the paper leaves room: every dimension is on 0-10; faithfulness is 10 x the mean support of
the response's extracted factual statements (supported 1, partly 0.5, unsupported 0), and 0 when it states
none; the reward is the mean of the four / 10. Faithfulness and completeness are judged against the
meta-question's context when it has one, else by the judge's own knowledge and the question.
"""

from __future__ import annotations

import re

from .parsing import ParseError, is_json, json_answer

DIMENSIONS = ("helpfulness", "logicality", "faithfulness", "completeness")
SUPPORT = {"supported": 1.0, "partly": 0.5, "unsupported": 0.0}
_ITEM = re.compile(r"^\s*[-*]\s*(.+?)\s*\|\s*(supported|partly|unsupported)\s*$", re.IGNORECASE | re.MULTILINE)


def parse_faithfulness(text: str) -> list[tuple[str, str]]:
    """[(statement, support)] from lines "- statement | supported" or {"statements": [...]}."""
    obj = json_answer(text)
    if is_json(obj):
        items = obj.get("statements") if isinstance(obj, dict) else None
        if not isinstance(items, list):
            raise ParseError("no 'statements' list")
        out = [(str(i.get("text", "")), str(i.get("support", "")).lower()) for i in items if isinstance(i, dict)]
    else:
        out = [(m.group(1), m.group(2).lower()) for m in _ITEM.finditer(text)]
        if not out and text.strip():
            raise ParseError("no '- statement | support' lines")
    bad = [s for _, s in out if s not in SUPPORT]
    if bad:
        raise ParseError(f"unknown support label {bad[0]!r}")
    return out


def faithfulness_score(items: list[tuple[str, str]]) -> float:
    """0-10: 10 x mean support; 0 when the response states no fact."""
    return 10.0 * sum(SUPPORT[s] for _, s in items) / len(items) if items else 0.0


def longreward_score(dimensions: dict[str, float]) -> float:
    """Mean of the four 0-10 dimensions / 10."""
    missing = [d for d in DIMENSIONS if d not in dimensions]
    if missing:
        raise ValueError(f"missing dimension(s) {missing}")
    return sum(dimensions[d] for d in DIMENSIONS) / (10.0 * len(DIMENSIONS))


def faithfulness_regex() -> str:
    return "(- [^\\n|]{1,200} \\| (supported|partly|unsupported)\\n){1,20}"


def faithfulness_schema() -> dict:
    item = {"type": "object", "properties": {"text": {"type": "string"},
                                             "support": {"type": "string", "enum": list(SUPPORT)}},
            "required": ["text", "support"], "additionalProperties": False}
    return {"type": "object", "properties": {"statements": {"type": "array", "items": item, "maxItems": 20}},
            "required": ["statements"], "additionalProperties": False}
