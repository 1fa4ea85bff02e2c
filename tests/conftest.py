"""Fixtures only: a fresh lake per test, a seeded lake, the offline tiny model built once per cache, SmolLM2
converted once per cache, the pipeline lake, and a real vLLM server of the tiny model, started once per session
for the tests that need it."""

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
    """The pipeline's judge: decides a statement (from its truth) when the answer shares two of its words, or
    else for half of the (statement, answer) pairs by their hash; otherwise Unknown. Its verdicts depend on the
    answer, so answers to one question get different scores whatever the tiny model's build writes."""
    from tests.helpers import truth
    from tests.servers.judge import JudgeServer

    with JudgeServer(truth=truth(), min_shared_words=2, decide_fraction=0.5) as server:
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


@pytest.fixture(scope="session")
def vllm_server(tiny_model_path, tmp_path_factory):
    """The tiny model served by the real vLLM(-cpu) OpenAI server on 127.0.0.1, as `tiny-served`, with LoRA and
    runtime adapter loading (rank <= 16); stopped at the end of the session."""
    pytest.importorskip("vllm", reason="vllm(-cpu) not installed")
    from tests.servers.vllm_server import VLLMServer

    with VLLMServer(tiny_model_path, tmp_path_factory.mktemp("vllm") / "server.log") as server:
        yield server
