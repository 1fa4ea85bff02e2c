"""`proxyreward train --iteration N`: DPO with LoRA on the pairs of an iteration.

The lake meets the training core here and nowhere else: the iteration's pairs (with their texts) go to a
Parquet file, reference log-probs missing for the current reference are computed once and written back
into `pairs`, the training core runs on the file, and the adapter lands in `<lake>/adapters/iteration=N`
with a `runs` row holding the config, metrics and adapter path. Under DDP, ranks other than 0 only train.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import polars as pl

from . import models
from .errors import ProxyRewardError
from .lake import Lake
from .lake.runs import record_run
from .settings import (
    DataSettings,
    DPOSettings,
    LoraSettings,
    ModelSettings,
    OptimSettings,
    TinySettings,
    TrainerSettings,
    TrainingSettings,
)

REF_COLUMNS = ("ref_chosen_logp", "ref_rejected_logp", "ref_model", "ref_adapter", "ref_tokenization")


def _publish(src: Path, dst: Path) -> None:
    """Copy a folder into place atomically (a crash leaves the old one or the new one)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}."))
    shutil.copytree(src, tmp, dirs_exist_ok=True)
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        os.replace(tmp, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dst)


def _store_reference(lake: Lake, iteration: int, pairs_file: Path, ident: dict) -> None:
    from .training.pairs import read_pairs

    refs = pl.DataFrame([{k: r[k] for k in ("question_id", "ref_chosen_logp", "ref_rejected_logp")}
                         for r in read_pairs(pairs_file)])
    current = lake.read("pairs", iteration).drop(REF_COLUMNS)
    updated = current.join(refs, on="question_id", how="left").with_columns(
        ref_model=pl.lit(ident["ref_model"]), ref_adapter=pl.lit(ident["ref_adapter"]),
        ref_tokenization=pl.lit(ident["ref_tokenization"]))
    lake.write("pairs", updated, iteration=iteration)


def _pair_rows(lake: Lake, iteration: int) -> list[dict]:
    """The iteration's pairs with their texts (`train_pairs.sql`); every pair must resolve."""
    expected = lake.sql("SELECT count(*) FROM pairs WHERE iteration = ?", [iteration]).item()
    if not expected:
        raise ProxyRewardError(f"no pairs for iteration {iteration}; run `proxyreward select --iteration "
                               f"{iteration}` first")
    rows = lake.run_sql_file("train_pairs", {"iteration": iteration})
    if rows.height != expected:
        raise ProxyRewardError(f"pairs of iteration {iteration}: {expected - rows.height} name rollouts or "
                               "meta-questions the lake does not have")
    return rows.to_dicts()


def train_iteration(lake: Lake, iteration: int, settings: TrainingSettings, tiny: TinySettings,
                    init_from_previous: bool = True, resume: bool = False, merged: bool = False,
                    prepare_only: bool = False) -> dict:
    """Train iteration N's adapter on its pairs (see `train`)."""
    from .training.core import ensure_reference, is_rank_zero, reference_identity, train_pairs
    from .training.pairs import write_pairs

    rows = _pair_rows(lake, iteration) if is_rank_zero() else []
    model = dataclasses.replace(settings.model, path=models.resolve(settings.model.path, tiny))
    if init_from_previous and iteration > 1 and not model.init_adapter:
        previous = lake.adapter_dir(iteration - 1)
        if not (previous / "adapter_config.json").exists():
            raise ProxyRewardError(f"iteration {iteration} starts from iteration {iteration - 1}'s adapter, "
                                   f"but {previous} has none; train iteration {iteration - 1} first")
        model = dataclasses.replace(model, init_adapter=str(previous))
    settings = dataclasses.replace(settings, model=model)
    run_dir = lake.root / "runs" / f"iteration={iteration}" / "train"
    pairs_file = run_dir / "pairs.parquet"
    if not is_rank_zero():  # a DDP child re-running this command: train only, the lake is rank 0's
        return train_pairs(pairs_file, run_dir, settings, resume=True, merged=merged)

    run_dir.mkdir(parents=True, exist_ok=True)
    with record_run(lake, iteration, "train", dataclasses.asdict(settings)) as metrics:
        ident = reference_identity(model, settings.data)
        for r in rows:  # stored log-probs count only when they came from this same reference
            if any(r[k] != v for k, v in ident.items()):
                r["ref_chosen_logp"] = r["ref_rejected_logp"] = None
        write_pairs(rows, pairs_file)
        reference = ensure_reference(pairs_file, settings)
        if reference and reference["computed"]:
            _store_reference(lake, iteration, pairs_file, reference)
        computed = reference["computed"] if reference else None
        if prepare_only:
            metrics.update(pairs_file=str(pairs_file), reference_computed=computed)
            print(f"pairs with reference log-probs: {pairs_file}")
            return {"pairs_file": str(pairs_file)}
        result = train_pairs(pairs_file, run_dir, settings, resume=resume, merged=merged)
        _publish(run_dir / "adapter", lake.adapter_dir(iteration))
        metrics.update(result, adapter=str(lake.adapter_dir(iteration)), reference_computed=computed)
    print(f"iteration {iteration}: trained on {result['pairs']} pairs, {result['global_step']} steps, "
          f"loss {result['metrics'].get('loss', float('nan')):.4f}; adapter -> {lake.adapter_dir(iteration)}")
    return result


def train(
    iteration: int,
    model: ModelSettings = ModelSettings(path="tiny"),
    lora: LoraSettings = LoraSettings(),
    dpo: DPOSettings = DPOSettings(),
    optim: OptimSettings = OptimSettings(),
    data: DataSettings = DataSettings(),
    trainer: TrainerSettings = TrainerSettings(),
    tiny: TinySettings = TinySettings(),
    init_from_previous: bool = True,
    resume: bool = False,
    merged: bool = False,
    prepare_only: bool = False,
    lake: str | None = None,
) -> dict:
    """Train the policy of iteration N with DPO + LoRA on that iteration's pairs.

    Args:
        iteration: whose pairs to train on; the adapter becomes the policy of iteration N.
        model: base weights (`tiny`, `smollm2`: the named offline models) and, optionally, an adapter to start from.
        lora: the adapter's shape.
        dpo: loss and reference (precomputed: stored in `pairs` from the policy before training).
        optim: AdamW and schedule.
        data: tokenisation and batching.
        trainer: epochs, accumulation, devices, strategy (ddp/fsdp), precision, checkpoints, loggers.
        tiny: the tiny model, when model.path is `tiny`.
        init_from_previous: start from iteration N-1's adapter (N > 1) unless model.init_adapter is set.
        resume: continue an interrupted run from its last checkpoint.
        merged: also export the merged full model.
        prepare_only: write the pairs file with its reference log-probs and stop (for launching the training
            core yourself, e.g. with torchrun or srun across nodes).
        lake: lake root (default: PROXYREWARD_LAKE or the repository's datalake/).
    """
    settings = TrainingSettings(model=model, lora=lora, dpo=dpo, optim=optim, data=data, trainer=trainer)
    return train_iteration(Lake(lake), iteration, settings, tiny, init_from_previous=init_from_previous,
                           resume=resume, merged=merged, prepare_only=prepare_only)
