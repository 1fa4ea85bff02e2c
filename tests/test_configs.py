"""Every YAML in configs/ parses against the commands that read it, so configs cannot rot."""

from __future__ import annotations

import inspect

import pytest
import yaml

from proxyreward_pl.__main__ import COMMANDS, build_parser
from proxyreward_pl.cliconfig import filter_config
from proxyreward_pl.paths import CONFIGS_DIR

CONFIGS = sorted(CONFIGS_DIR.glob("*.yaml"))


def _commands(level=COMMANDS, path=()):
    for name, entry in level.items():
        if isinstance(entry, dict):
            yield from _commands(entry, path + (name,))
        else:
            yield path + (name,), entry[0], entry[1]


def test_there_are_configs():
    assert any(c.name == "tiny.yaml" for c in CONFIGS)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_key_is_read_by_some_command(config):
    keys = set(yaml.safe_load(config.read_text()))
    taken = {p for _, fn, _ in _commands() for p in inspect.signature(fn).parameters}
    assert keys <= taken, f"{config.name}: no command takes {sorted(keys - taken)}"


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_parses_for_every_command(config):
    parser = build_parser()
    text = config.read_text()
    for path, fn, positional in _commands():
        params = inspect.signature(fn).parameters
        required = [p for p in params if params[p].default is inspect.Parameter.empty]
        args = list(path) + ["x" for p in required if p in positional]
        args += [a for p in required if p not in positional for a in (f"--{p}", "1")]
        section = filter_config(fn, text)
        ns = parser.parse_args(args + ["--config", yaml.safe_dump(section) or "{}"])
        init = parser.instantiate(ns)
        for name in path:
            init = init[name]
        for key, value in section.items():
            got = init[key]
            if isinstance(value, dict):
                for k, v in value.items():
                    got_v = getattr(got, k)
                    assert (list(got_v) if isinstance(got_v, tuple) else got_v) == v, (config.name, path, key, k)
            else:
                assert (list(got) if isinstance(got, tuple) else got) == value, (config.name, path, key)


def test_the_longreward_recipe():
    """configs/longreward.yaml: 10 answers per question, every question kept, max vs min by the LongReward score,
    the official pipeline's retrieval and chunk sizes."""
    from proxyreward_pl.settings import DPOSettings, LongRewardSettings, RolloutSettings, SelectSettings

    cfg = yaml.safe_load((CONFIGS_DIR / "longreward.yaml").read_text())
    sampling, selection = RolloutSettings(**cfg["sampling"]), SelectSettings(**cfg["selection"])
    assert sampling.k == 10
    assert selection.reward == "longreward" and selection.top_fraction == 1.0 and selection.top_k is None
    assert not selection.random_pairs and selection.conflict_reward is None and selection.max_length_ratio is None
    lr = LongRewardSettings(**cfg["longreward"])
    assert (lr.chunk_tokens, lr.top_k, lr.completeness_chunk_tokens) == (128, 5, 4096)
    assert DPOSettings(**cfg["dpo"]).sft_weight > 0  # DPO plus an SFT term on the chosen answer
    assert cfg["data"]["max_prompt_length"] + cfg["sampling"]["max_new_tokens"] <= cfg["data"]["max_length"]
