"""What tests share besides fixtures: running the CLI, literal lake rows for stage tests, and learnable
preference pairs for the training core."""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from proxyreward_pl.dataset import seed_records
from proxyreward_pl.lake import Lake
from proxyreward_pl.settings import DataSettings, LoraSettings, ModelSettings, TrainerSettings, TrainingSettings
from proxyreward_pl.training.pairs import write_pairs

REPO = Path(__file__).resolve().parents[1]


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


# Small and quick: HF engines, 6 questions x 3 answers, short answers, one epoch.
SMALL = ["--config", "configs/tiny.yaml", "--policy.engine", "hf", "--judge.engine", "hf",
         "--sampling.k", "3", "--sampling.max_questions", "6", "--sampling.max_new_tokens", "24",
         "--evaluation.max_new_tokens", "24", "--trainer.epochs", "1", "--data.max_length", "256"]


def iterate_cmd(lake: Path, judge_url: str, *extra: str) -> list[str]:
    """`proxyreward iterate` on the tiny model, small and quick (SMALL), judged over HTTP by a fixture judge
    that reads the answer (`pipeline_judge`): the tiny model as judge barely does (its verdicts follow the
    statement, not the answer), so whether its scores vary within a question, and the loop finds pairs, would
    be luck of its build."""
    judge = ["--judge.engine", "openai", "--judge.model", "judge", "--judge.base_url", judge_url,
             "--judge.mode", "logprob", "--judge.timeout", "10"]
    return [sys.executable, "-m", "proxyreward_pl", "iterate", *SMALL, *judge, "--lake", str(lake), *extra]


# -- literal rows for stage tests -------------------------------------------------------------------------
def train_records(n: int):
    return [r for r in seed_records() if r.split == "train"][:n]


def truth() -> dict[str, bool]:
    return {s: a for r in seed_records() for s, a in r.statements}


def add_rollouts(lake: Lake, iteration: int, n_questions: int = 8, k: int = 2) -> list[dict]:
    """k rollouts per train question: sample 0 states the true facts, sample 1 the false ones, the rest
    a few facts each."""
    rows = []
    for r in train_records(n_questions):
        true = " ".join(s for s, a in r.statements if a)
        false = " ".join(s for s, a in r.statements if not a)
        for j in range(k):
            text = true if j == 0 else false if j == 1 else " ".join(s for s, _ in r.statements[j:j + 3])
            rows.append({"iteration": iteration, "rollout_id": f"{iteration}:{r.question_id}:{j}",
                         "question_id": r.question_id, "policy": "test", "sample_index": j, "response": text,
                         "n_tokens": len(text.split()), "finish_reason": "stop"})
    lake.write("rollouts", rows, iteration=iteration)
    return rows


def add_pairs(lake: Lake, iteration: int, n_questions: int = 8) -> None:
    """Two rollouts per train question (true facts vs false ones) and the pair between them."""
    add_rollouts(lake, iteration, n_questions, k=2)
    pairs = [{"iteration": iteration, "question_id": r.question_id,
              "chosen_rollout_id": f"{iteration}:{r.question_id}:0",
              "rejected_rollout_id": f"{iteration}:{r.question_id}:1",
              "chosen_score": 0.9, "rejected_score": 0.2, "score_variance": 0.1}
             for r in train_records(n_questions)]
    lake.write("pairs", pairs, iteration=iteration)


# -- learnable preference pairs (lowercase preferred over uppercase) ------------------------------------
def case_pairs(n: int, seed: int = 0, offset: int = 0) -> list[dict]:
    rows = [{"prompt": r.text, "chosen": s.lower(), "rejected": s.upper()}
            for r in seed_records() for s, _ in r.statements]
    random.Random(seed).shuffle(rows)
    return rows[offset: offset + n]


def write_case_pairs(path: Path, n: int, offset: int = 0) -> Path:
    write_pairs(case_pairs(n, offset=offset), path)
    return path


def small_settings(model_path: Path, **trainer) -> TrainingSettings:
    return TrainingSettings(
        model=ModelSettings(path=str(model_path)),
        lora=LoraSettings(r=4, alpha=8),
        data=DataSettings(max_length=128, batch_size=4),
        trainer=TrainerSettings(**{"epochs": 1, "accumulate_grad_batches": 1, "checkpoint_every_n_steps": 1000,
                                   "loggers": ("csv",), "progress_bar": False, **trainer}),
    )


# -- adapters ------------------------------------------------------------------------------------------
def save_random_adapter(model_path: Path, folder: Path, rank: int = 16, seed: int = 0) -> Path:
    """A LoRA adapter with random (non-zero) weights on the attention projections, in PEFT format."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_path),
                           LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"],
                                      init_lora_weights=False))
    model.save_pretrained(folder)
    return folder


@contextlib.contextmanager
def killed_after(proxy, completions: int) -> Iterator[list[float]]:
    """Within the block, a thread kills `proxy` (a FaultProxy) once it has forwarded `completions` completion
    requests; yields a list that then holds the time of the kill."""
    killed_at: list[float] = []

    def kill():
        while len(proxy.completions()) < completions:
            time.sleep(0.005)
        killed_at.append(time.monotonic())
        proxy.kill()

    killer = threading.Thread(target=kill)
    killer.start()
    try:
        yield killed_at
    finally:
        killer.join()
