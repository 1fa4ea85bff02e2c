"""`proxyreward` command line: each subcommand is one typed function, parsed by jsonargparse. It parses and
dispatches; it holds no logic of its own.

`--config FILE` works on every subcommand: a YAML file (see configs/) whose top-level keys are the
sections of the whole pipeline; each subcommand takes the keys it has parameters for and ignores the
rest, and flags override it wherever they stand (`--judge.model X`).
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from collections.abc import Callable
from typing import Any

from . import dataset, judge_probe, query, synthesis, tiny
from .cliconfig import rewrite_config
from .closedworld import bench as closedworld
from .errors import ProxyRewardError
from .evaluate import evaluate
from .iterate import iterate
from .report import report
from .rollout import rollout
from .score import score
from .select import select
from .settings import SettingsError
from .train import train

# name -> (function, parameters taken as positional arguments); a dict nests subcommands.
COMMANDS: dict[str, Any] = {
    "seed": (dataset.seed, ()),
    "import": (dataset.import_dataset, ("path",)),
    "export": (dataset.export, ("table", "path")),
    "sql": (query.sql, ("query",)),
    "lake": {"status": (query.lake_status, ()), "lineage": (query.lake_lineage, ()), "check": (query.lake_check, ())},
    "tiny-model": (tiny.tiny_model, ("out",)),
    "dataset": {"generate": (synthesis.generate, ()), "proxyqa": (synthesis.proxyqa, ("path",)),
                "stats": (synthesis.stats, ())},
    "rollout": (rollout, ()),
    "score": (score, ()),
    "select": (select, ()),
    "train": (train, ()),
    "evaluate": (evaluate, ()),
    "iterate": (iterate, ()),
    "report": (report, ()),
    "judge": {"probe": (judge_probe.probe, ())},
    "closedworld": {"build": (closedworld.build, ()), "run": (closedworld.run, ())},
}


def _summary(fn: Callable) -> str:
    return (inspect.getdoc(fn) or "").split("\n\n")[0].replace("\n", " ")


def _param_docs(fn: Callable) -> dict[str, str]:
    from docstring_parser import parse

    return {p.arg_name: p.description or "" for p in parse(inspect.getdoc(fn) or "").params}


def _add_command(parser, name: str, fn: Callable, positional: tuple[str, ...]) -> None:
    from jsonargparse import ActionConfigFile, ArgumentParser

    sub = ArgumentParser(description=inspect.getdoc(fn), exit_on_error=True)
    sub.add_argument("--config", action=ActionConfigFile,
                     help="YAML config (configs/*.yaml); keys this command does not take are ignored")
    params = inspect.signature(fn).parameters
    docs = _param_docs(fn)
    for p in positional:
        param = params[p]
        optional = param.default is not inspect.Parameter.empty
        ann = param.annotation
        kind = str if isinstance(ann, str) or ann is inspect.Parameter.empty else ann
        if optional:
            sub.add_argument(p, type=str, nargs="?", help=docs.get(p, ""))
        else:
            sub.add_argument(p, type=kind, help=docs.get(p, ""))
    sub.add_function_arguments(fn, skip=set(positional))
    parser.add_subcommand(name, sub, help=_summary(fn))


def build_parser():
    from jsonargparse import ArgumentParser

    root = ArgumentParser(prog="proxyreward", description=(
        "Targeted proxy-QA rewards and DPO with LoRA for long-form generation (ProxyReward). "
        "Every command takes --lake PATH (default: $PROXYREWARD_LAKE or datalake/) and --config FILE."))

    def add_level(parser, commands: dict) -> None:
        subs = parser.add_subcommands(required=True)
        nested = []
        for name, entry in commands.items():
            if isinstance(entry, dict):
                child = ArgumentParser()
                subs.add_subcommand(name, child, help=f"{name} commands: {', '.join(entry)}")
                nested.append((child, entry))
            else:
                _add_command(subs, name, *entry)
        for child, entry in nested:
            add_level(child, entry)

    add_level(root, COMMANDS)
    return root


def _resolve(argv: list[str]) -> tuple[list[str], Callable | None]:
    """The subcommand path at the start of argv, and its function."""
    level, path = COMMANDS, []
    for arg in argv:
        entry = level.get(arg) if isinstance(level, dict) else None
        if entry is None:
            break
        path.append(arg)
        if not isinstance(entry, dict):
            return path, entry[0]
        level = entry
    return path, None


def _call(fn: Callable, namespace) -> Any:
    kwargs = {k: v for k, v in vars(namespace).items() if k in inspect.signature(fn).parameters}
    return fn(**kwargs)


def _settings_error(fn: Callable, ns, exc: Exception) -> str:
    """`--section.field: problem`: the section is the parameter whose settings refuse to be built."""
    for name, param in inspect.signature(fn).parameters.items():
        cls = param.annotation if isinstance(param.annotation, type) else type(param.default)
        value = getattr(ns, name, None)
        if dataclasses.is_dataclass(cls) and value is not None and hasattr(value, "as_dict"):
            try:
                cls(**value.as_dict())
            except SettingsError as inner:
                return f"--{name}.{inner}"
            except Exception:  # noqa: S112 - not this section's fault
                continue
    return str(exc)


def parse(argv: list[str]) -> tuple[Callable, Any]:
    """The subcommand's function and its instantiated arguments; SettingsError names the bad option."""
    path, fn = _resolve(argv)
    if fn is not None:
        argv = path + rewrite_config(argv[len(path):], fn)
    parser = build_parser()
    ns = ns_cmd = parser.parse_args(argv)
    for name in path:
        ns_cmd = ns_cmd[name]
    try:
        init = parser.instantiate(ns)
    except (SettingsError, ValueError) as exc:  # an optional section (evaluation.judge) wraps it in a ValueError
        raise ProxyRewardError(_settings_error(fn, ns_cmd, exc)) from None
    for name in path:
        init = init[name]
    return fn, init


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        fn, args = parse(argv)
        _call(fn, args)
    except ProxyRewardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # DuckDB's own message for SQL errors, not a traceback
        import duckdb

        if isinstance(exc, duckdb.Error):
            print(f"error: {exc}", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
