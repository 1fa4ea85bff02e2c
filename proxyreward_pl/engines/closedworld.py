"""The closed world's exact judge, as an engine (`engine: closedworld`): it reads the proxy-judge prompt that
`score` renders, as an LLM judge would, and decides every statement by rule (`world.decide`).

It answers in whatever form the request asks for: numbered lines (which also satisfy the lines regex), a
JSON object when a JSON schema is given, or log-probabilities for `choices` (True / False / Unknown: 0 for
its verdict, Unknown included, -inf for the others). The world's facts are not needed:
a statement names its person, attribute and value, and the response either states that fact or not.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable

from ..closedworld import world
from .base import Engine, Request, Result

_RESPONSE = re.compile(r"<response>\n(.*)\n</response>", re.DOTALL)
_NUMBERED = re.compile(r"^(\d+)\. (.+)$", re.MULTILINE)
_SINGLE = re.compile(r"^Statement: (.+)$", re.MULTILINE)
_WORD = {True: "True", False: "False", None: "Unknown"}


class PromptError(ValueError):
    """The request is not a proxy-judge prompt this judge can read."""


def read_prompt(text: str) -> tuple[str, list[str]]:
    """(response, statements) from a rendered proxy_judge prompt."""
    m = _RESPONSE.search(text)
    if not m:
        raise PromptError("no <response> block in the prompt")
    rest = text[m.end():]
    single = _SINGLE.search(rest)
    statements = [single.group(1)] if single else [s for _, s in sorted(
        ((int(n), s.strip()) for n, s in _NUMBERED.findall(rest)))]
    if not statements:
        raise PromptError("no statements after the response")
    return m.group(1), statements


class WorldJudge(Engine):
    """Decides proxy statements of the closed world exactly; `model` names the world (for the cache key)."""

    kind = "closedworld"

    def _run(self, requests: list[Request], on_result: Callable[[Result], None]) -> None:
        for req in requests:
            try:
                response, statements = read_prompt(req.messages[-1]["content"])
            except PromptError as exc:
                on_result(Result(req, error=f"closedworld judge: {exc}"))
                continue
            verdicts = [world.decide(s, response) for s in statements]
            if req.choices is not None:
                lp = {c: (0.0 if c == _WORD[verdicts[0]] else -math.inf) for c in req.choices}
                on_result(Result(req, choice_logprobs=lp))
                continue
            if req.json_schema is not None:
                text = json.dumps({str(i): _WORD[v] for i, v in enumerate(verdicts, start=1)})
            else:
                text = "".join(f"{i}: {_WORD[v]}\n" for i, v in enumerate(verdicts, start=1))
            on_result(Result(req, texts=[text] * req.n, finish_reasons=["stop"] * req.n,
                             completion_tokens=[len(statements)] * req.n))
