"""Reading judge answers: JSON or free text, and the error for an answer without the asked-for form."""

from __future__ import annotations

import json
from typing import Any

_ABSENT = object()


class ParseError(ValueError):
    """Retried by the score stage, then recorded as a failure with this message."""


def json_answer(text: str) -> Any:
    """The answer as JSON when it is a JSON object (`_ABSENT` when it is free text); ParseError if malformed."""
    stripped = text.strip()
    if not stripped.startswith("{"):
        return _ABSENT
    try:
        return json.loads(stripped)
    except json.JSONDecodeError as exc:
        raise ParseError(f"malformed JSON: {exc.msg}") from None


def is_json(value: Any) -> bool:
    return value is not _ABSENT
