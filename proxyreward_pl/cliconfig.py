"""`--config FILE` for a pipeline config: keep the sections a command has parameters for.

A config (configs/*.yaml) describes the whole pipeline; each command takes the sections it knows, so one
file serves every command. Kept free of heavy imports: the training core's own CLI uses it too.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable

import yaml

from .errors import ProxyRewardError


def filter_config(fn: Callable, text: str) -> dict:
    """The keys of a pipeline config that `fn` has parameters for."""
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ProxyRewardError("a config file holds a mapping of sections")
    params = inspect.signature(fn).parameters
    return {k: v for k, v in data.items() if k in params}


def rewrite_config(argv: list[str], fn: Callable) -> list[str]:
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        value = None
        if arg == "--config" and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
        elif arg.startswith("--config="):
            value, i = arg.split("=", 1)[1], i + 1
        else:
            if arg.startswith("--") and "-" in arg[2:].split("=", 1)[0]:  # --per-question == --per_question
                name, eq, val = arg[2:].partition("=")
                arg = "--" + name.replace("-", "_") + eq + val
            out.append(arg)
            i += 1
            continue
        text = open(value, encoding="utf-8").read() if os.path.exists(value) else value
        out += ["--config", yaml.safe_dump(filter_config(fn, text)) or "{}"]
    return out
