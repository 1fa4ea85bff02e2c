"""Fixtures only: a fresh lake per test, a seeded lake, the offline tiny model built once per cache, SmolLM2
converted once per cache."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from proxyreward_pl import tiny  # noqa: E402
from proxyreward_pl.dataset import seed_records, store  # noqa: E402
from proxyreward_pl.lake import Lake  # noqa: E402
from proxyreward_pl.settings import TinySettings  # noqa: E402
from tests.helpers import REPO, iterate_cmd  # noqa: E402


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
    return tiny.cached(TinySettings())


@pytest.fixture(scope="session")
def pipeline_judge():
    """The pipeline's judge: decides a statement (from its truth) when the answer shares two of its words,
    else Unknown."""
    from tests.helpers import truth
    from tests.servers.judge import JudgeServer

    with JudgeServer(truth=truth(), min_shared_words=2) as server:
        yield server.url


@pytest.fixture(scope="session")
def pipeline_lake(tmp_path_factory, pipeline_judge) -> Path:
    """A lake made by `proxyreward iterate` (2 iterations) on the tiny model, shared by the tests that read it
    (copy it before changing it)."""
    root = tmp_path_factory.mktemp("pipeline") / "lake"
    proc = subprocess.run(iterate_cmd(root, pipeline_judge), cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (root / "iterate.out").write_text(proc.stdout)
    return root


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct converted from the packaged GGUF, once, under .cache/."""
    from proxyreward_pl import smollm2

    return smollm2.cached()
