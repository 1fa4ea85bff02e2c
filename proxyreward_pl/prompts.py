"""Prompt templates in `prompts/*.j2`, rendered by one function; every row a prompt produced records its hash.

Untrusted text (a response, a context) goes through the `data` filter, which defuses anything that looks
like one of the template's delimiters, so a response cannot close its block and speak as the grader.
"""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path

import jinja2

from .errors import ProxyRewardError
from .paths import PROMPTS_DIR

DELIMITED = ("response", "context", "statement")
_TAG = re.compile(r"<(\s*/?\s*)(" + "|".join(DELIMITED) + r")(\W)", re.IGNORECASE)


def data(text: str) -> str:
    """Untrusted text for inside a delimited block: `<response>`/`</response>`-like tags lose their `<`."""
    return _TAG.sub(lambda m: "‹" + m.group(1) + m.group(2) + m.group(3), str(text))


@functools.cache
def _environment(root: Path) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(root), undefined=jinja2.StrictUndefined,
                             autoescape=False, keep_trailing_newline=False)
    env.filters["data"] = data
    return env


def source(name: str, root: Path = PROMPTS_DIR) -> str:
    path = root / f"{name}.j2"
    if not path.exists():
        raise ProxyRewardError(f"no prompt template {path}")
    return path.read_text(encoding="utf-8")


_INCLUDE = re.compile(r"""{%-?\s*include\s+["']([^"']+)\.j2["']""")


def template_hash(name: str, root: Path = PROMPTS_DIR) -> str:
    """The hash stored on every row this template produced: SHA-256 of its text and of the templates it
    includes (first 16 hex digits)."""
    h = hashlib.sha256()
    todo, seen = [name], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        text = source(current, root)
        h.update(text.encode())
        todo.extend(_INCLUDE.findall(text))
    return h.hexdigest()[:16]


def render(name: str, root: Path = PROMPTS_DIR, **variables) -> str:
    return render_exact(name, root, **variables).strip() + "\n"


def render_exact(name: str, root: Path = PROMPTS_DIR, **variables) -> str:
    """The text exactly as the template writes it (no whitespace trimmed or added): the policy's prompt."""
    try:
        return _environment(root).get_template(f"{name}.j2").render(**variables)
    except jinja2.UndefinedError as exc:
        raise ProxyRewardError(f"prompt {name}: {exc}") from None
