"""Shared fixtures: a fresh lake per test, a seeded lake, the offline tiny model built once per cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from proxyreward_pl import tiny  # noqa: E402
from proxyreward_pl.dataset import seed_records, store  # noqa: E402
from proxyreward_pl.lake import Lake  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def lake(tmp_path) -> Lake:
    return Lake(tmp_path / "lake")


@pytest.fixture
def seeded_lake(lake) -> Lake:
    store(lake, seed_records(), "seed")
    return lake


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    """The default tiny model (configs/tiny.yaml), built once and cached under .cache/."""
    return tiny.cached(tiny.TinyModelConfig())


def run_cli(*args: str, lake: Path | None = None, check: bool = False, env: dict | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python -m proxyreward_pl ARGS` in a real subprocess."""
    full_env = {**os.environ, **(env or {})}
    cmd = [sys.executable, "-m", "proxyreward_pl", *args]
    if lake is not None:
        cmd += ["--lake", str(lake)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc
