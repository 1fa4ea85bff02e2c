"""Synthetic preference pairs for trainer tests: learnable (lowercase preferred over uppercase)."""

from __future__ import annotations

import random
from pathlib import Path

from proxyreward_pl.data import DataConfig, write_pairs
from proxyreward_pl.dataset import seed_records
from proxyreward_pl.dpo_module import LoraSettings, ModelSettings
from proxyreward_pl.trainer import TrainerSettings


def case_pairs(n: int, seed: int = 0, offset: int = 0) -> list[dict]:
    rows = [{"prompt": r.text, "chosen": s.lower(), "rejected": s.upper()}
            for r in seed_records() for s, _ in r.statements]
    random.Random(seed).shuffle(rows)
    return rows[offset: offset + n]


def write_case_pairs(path: Path, n: int, offset: int = 0) -> Path:
    write_pairs(case_pairs(n, offset=offset), path)
    return path


def small_settings(model_path: Path, **trainer) -> dict:
    return dict(
        model=ModelSettings(path=str(model_path)),
        lora=LoraSettings(r=4, alpha=8),
        data=DataConfig(max_length=128, batch_size=4),
        trainer=TrainerSettings(**{"epochs": 1, "accumulate_grad_batches": 1, "checkpoint_every_n_steps": 1000,
                                   "loggers": ("csv",), "progress_bar": False, **trainer}),
    )
