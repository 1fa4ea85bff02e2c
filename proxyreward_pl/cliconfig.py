"""`--config FILE` for a pipeline config: keep the sections a command has parameters for, and let flags win.

A config (configs/*.yaml) describes the whole pipeline; each command takes the sections it knows, so one
file serves every command. Flags beat config files whatever their order on the command line (`--lake X
--config configs/tiny.yaml` uses X); of two config files the later wins. Kept free of heavy imports: the
training core's own CLI uses it too.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable

import yaml

from .errors import ProxyRewardError


def filter_config(fn: Callable, text: str, where: str = "--config") -> dict:
    """The keys of a pipeline config that `fn` has parameters for."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ProxyRewardError(f"{where}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ProxyRewardError(f"{where}: no such file, and not a YAML mapping of sections")
    params = inspect.signature(fn).parameters
    return {k: v for k, v in data.items() if k in params}


def rewrite_config(argv: list[str], fn: Callable) -> list[str]:
    """argv for jsonargparse: every `--config` first (filtered to `fn`'s sections, in their own order), then
    every other argument as given (`--per-question` spelled `--per_question`), so that flags override
    configs wherever they stand."""
    configs, rest, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
        elif arg.startswith("--config="):
            value, i = arg.split("=", 1)[1], i + 1
        else:
            if arg.startswith("--") and "-" in arg[2:].split("=", 1)[0]:  # --per-question == --per_question
                name, eq, val = arg[2:].partition("=")
                arg = "--" + name.replace("-", "_") + eq + val
            rest.append(arg)
            i += 1
            continue
        if os.path.exists(value):
            with open(value, encoding="utf-8") as fh:
                text = fh.read()
        else:
            text = value
        configs += ["--config", yaml.safe_dump(filter_config(fn, text, f"--config {value}")) or "{}"]
    return configs + rest
