"""Rewards as pure functions of what was expected and what the judge said; parsers of judge outputs."""

from .llm_judge import normalise_llm_judge, parse_rated
from .longreward import faithfulness_score, longreward_score, parse_rating, parse_statements, parse_support
from .parsing import ParseError
from .proxy import VERDICTS, parse_verdicts, proxy_scores

__all__ = ["VERDICTS", "ParseError", "faithfulness_score", "longreward_score", "normalise_llm_judge",
           "parse_rated", "parse_rating", "parse_statements", "parse_support", "parse_verdicts", "proxy_scores"]

