"""LongReward (Zhang et al. 2024, arXiv 2410.21252): helpfulness, logicality, faithfulness and completeness of a
response, each 0-10, judged by an LLM; the reward is their mean / 10.

Pure pieces: the parsers of each step's answer, the constraints (regex, JSON schema) that shape those answers,
and the scores. As in the official pipeline, a judge writes its analysis first and its verdict last, in
double brackets: `[[7]]` for a rating, `[[Fully supported]]` / `[[Partially supported]]` / `[[No support]]`
for one statement, worth 1 / 0.5 / 0. Faithfulness is 10 x the mean support of the response's factual
statements (0 when it states none: a response that asserts nothing earns nothing here).
"""

from __future__ import annotations

import math
import re

from .parsing import ParseError, is_json, json_answer

DIMENSIONS = ("helpfulness", "logicality", "faithfulness", "completeness")
SUPPORT = {"Fully supported": 1.0, "Partially supported": 0.5, "No support": 0.0}
SUPPORT_CHOICES = {"Fully": 1.0, "Partially": 0.5, "No": 0.0}
"""logprob mode: the first word of each label, scored as the judge's next token."""
NO_STATEMENTS = "No factual statements."
NO_INFORMATION = "No relevant information."

_RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_LABEL = re.compile(r"\[\[\s*([A-Za-z][A-Za-z ]*?)\s*\]\]")
_STATEMENT = re.compile(r"<statement>(.*?)</statement>", re.DOTALL | re.IGNORECASE)
_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+(.+?)\s*$", re.MULTILINE)
_ANALYSIS = re.compile(r"^\s*analysis\s*:\s*", re.IGNORECASE)
_VERDICT_LABEL = re.compile(r"\s*(rating|support|score)\s*:\s*$", re.IGNORECASE)


def _analysis(text: str, cut: int) -> str:
    """The judge's analysis: its text before the verdict, without the labels the answer form adds."""
    return _VERDICT_LABEL.sub("", _ANALYSIS.sub("", text[:cut])).strip()


def parse_rating(text: str, low: int = 0, high: int = 10) -> tuple[float, str]:
    """(rating, analysis) from "analysis ... [[n]]" (the last one counts) or {"analysis": ..., "rating": n}."""
    obj = json_answer(text)
    if is_json(obj):
        rating = obj.get("rating") if isinstance(obj, dict) else None
        if isinstance(rating, bool) or not isinstance(rating, int | float):
            raise ParseError("no numeric rating")
        analysis = str(obj.get("analysis", ""))
    else:
        found = list(_RATING.finditer(text))
        if not found:
            raise ParseError("no '[[n]]' rating")
        rating, analysis = float(found[-1].group(1)), _analysis(text, found[-1].start())
    if not low <= rating <= high:
        raise ParseError(f"rating {rating} outside {low}-{high}")
    return float(rating), analysis


def _label(raw: str) -> str:
    low = raw.strip().lower()
    for label in SUPPORT:
        if low == label.lower() or low == label.split()[0].lower():
            return label
    if low in ("not supported", "unsupported", "no"):
        return "No support"
    raise ParseError(f"unknown support label {raw!r} ({', '.join(SUPPORT)})")


def parse_support(text: str) -> tuple[str, str]:
    """(label, analysis) from "analysis ... [[Fully supported]]" or {"analysis": ..., "support": label}."""
    obj = json_answer(text)
    if is_json(obj):
        support = obj.get("support") if isinstance(obj, dict) else None
        if not isinstance(support, str):
            raise ParseError("no 'support' label")
        return _label(support), str(obj.get("analysis", ""))
    found = list(_LABEL.finditer(text))
    if not found:
        raise ParseError("no '[[Fully supported]]', '[[Partially supported]]' or '[[No support]]'")
    return _label(found[-1].group(1)), _analysis(text, found[-1].start())


def parse_statements(text: str, limit: int) -> list[str]:
    """The factual statements from "<statement>...</statement>" lines (or {"statements": [...]}); an answer
    that says there are none gives []. At most `limit` are kept, in order."""
    obj = json_answer(text)
    if is_json(obj):
        items = obj.get("statements") if isinstance(obj, dict) else None
        if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
            raise ParseError("no 'statements' list of strings")
        found = items
    else:
        found = _STATEMENT.findall(text)
        if not found and NO_STATEMENTS.rstrip(".").lower() not in text.lower():
            raise ParseError(f"no '<statement>...</statement>' lines and no '{NO_STATEMENTS}'")
    out, seen = [], set()
    for s in (" ".join(s.split()) for s in found):
        if s and s.lower() not in seen:
            seen.add(s.lower())
            out.append(s)
    return out[:limit]


def parse_information(text: str) -> list[str]:
    """The question-relevant information a judge extracted from one chunk: numbered or bulleted lines (or
    {"information": [...]}); "No relevant information" gives []."""
    obj = json_answer(text)
    if is_json(obj):
        items = obj.get("information") if isinstance(obj, dict) else None
        if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
            raise ParseError("no 'information' list of strings")
        return [s.strip() for s in items if s.strip()]
    if NO_INFORMATION.rstrip(".").lower() in text.lower():
        return []
    items = _ITEM.findall(text)
    if not items:
        raise ParseError(f"no numbered items and no '{NO_INFORMATION}'")
    return items


def faithfulness_score(supports: list[float]) -> float:
    """0-10: 10 x the mean support (1 fully, 0.5 partially, 0 no support); 0 when the response states no fact."""
    return 10.0 * sum(supports) / len(supports) if supports else 0.0


def expected_value(logprobs: dict[str, float], values: dict[str, float]) -> float:
    """logprob mode: the value (a rating, a support) the judge's next-token probabilities of the choices expect."""
    finite = {k: v for k, v in logprobs.items() if k in values and math.isfinite(v)}
    if not finite:
        raise ParseError("no probability on any choice")
    top = max(finite.values())
    weights = {k: math.exp(v - top) for k, v in finite.items()}
    return sum(values[k] * w for k, w in weights.items()) / sum(weights.values())


def longreward_score(dimensions: dict[str, float]) -> float:
    """Mean of the four 0-10 dimensions / 10."""
    missing = [d for d in DIMENSIONS if d not in dimensions]
    if missing:
        raise ValueError(f"missing dimension(s) {missing}")
    return sum(dimensions[d] for d in DIMENSIONS) / (10.0 * len(DIMENSIONS))


# -- the shapes of the answers (regex for vLLM, JSON schemas for other servers) --------------------------------
def rating_regex(low: int = 0, high: int = 10) -> str:
    numbers = "|".join(str(i) for i in range(high, low - 1, -1))
    return f"Analysis: [^\\n]{{1,600}}\\nRating: \\[\\[({numbers})\\]\\]\\n"


def rating_schema(low: int = 0, high: int = 10) -> dict:
    return {"type": "object", "properties": {"analysis": {"type": "string"},
                                             "rating": {"type": "integer", "minimum": low, "maximum": high}},
            "required": ["analysis", "rating"], "additionalProperties": False}


def support_regex() -> str:
    labels = "|".join(SUPPORT)
    return f"Analysis: [^\\n]{{1,600}}\\nSupport: \\[\\[({labels})\\]\\]\\n"


def support_schema() -> dict:
    return {"type": "object", "properties": {"analysis": {"type": "string"},
                                             "support": {"type": "string", "enum": list(SUPPORT)}},
            "required": ["analysis", "support"], "additionalProperties": False}


def statements_regex(limit: int) -> str:
    return f"((<statement>[^<>\\n]{{1,400}}</statement>\\n){{1,{limit}}}|{re.escape(NO_STATEMENTS)}\\n)"


def statements_schema(limit: int) -> dict:
    return {"type": "object", "properties": {"statements": {"type": "array", "items": {"type": "string"},
                                                            "maxItems": limit}},
            "required": ["statements"], "additionalProperties": False}


def information_regex(limit: int = 30) -> str:
    return f"(({re.escape(NO_INFORMATION)})\\n|([1-9][0-9]?\\. [^\\n]{{1,400}}\\n){{1,{limit}}})"


def information_schema(limit: int = 30) -> dict:
    return {"type": "object", "properties": {"information": {"type": "array", "items": {"type": "string"},
                                                             "maxItems": limit}},
            "required": ["information"], "additionalProperties": False}
