"""`proxyreward train --iteration N`: DPO with LoRA (or full fine-tuning) on the pairs of an iteration.

The lake meets the training core here and nowhere else: the iteration's pairs (with their texts and the
reference log-probs stored for the current reference) go to a Parquet file; the training core runs on it in
a process of its own (`python -m proxyreward_pl.training`, the entry a multi-node launch uses too), so that
Lightning's launcher re-runs only the core for each extra rank; reference log-probs it computed are written
back into `pairs`; the adapter lands in `<lake>/adapters/iteration=N` (a fully fine-tuned model in
`<lake>/models/iteration=N`) with a `runs` row holding the config, metrics and path. A failed core is
recorded as a failed `train` run with its last lines.
"""

from __future__ import annotations

import collections
import ctypes
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import polars as pl
import yaml

from . import models
from .console import say
from .errors import ProxyRewardError
from .lake import Lake
from .lake.runs import record_run
from .policy_prompt import training_prompts
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

REF_COLUMNS = ("ref_chosen_logp", "ref_rejected_logp", "ref_tokens", "ref_model", "ref_adapter", "ref_tokenization")


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

    refs = pl.DataFrame([{k: r[k] for k in ("question_id", "ref_chosen_logp", "ref_rejected_logp", "ref_tokens")}
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


def _die_with_parent() -> None:
    """In the child, before exec: be killed when the stage's process dies (a killed `iterate` must not leave
    a training core behind, writing into a run folder that the re-run is about to use)."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the child may outlive a killed parent
        pass


def run_core(args: list[str], log: Path) -> None:
    """Run the training core in a process of its own, its output streamed to ours and to `log`; a failure
    raises with the core's last lines."""
    cmd = [sys.executable, "-m", "proxyreward_pl.training", *args]
    tail: collections.deque[str] = collections.deque(maxlen=25)
    with open(log, "a", encoding="utf-8") as fh, subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            preexec_fn=_die_with_parent) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            fh.write(line)
            tail.append(line.rstrip())
        code = proc.wait()
    if code != 0:
        lines = "\n".join(f"  {t}" for t in tail)
        raise ProxyRewardError(f"the training core failed (exit code {code}); its last lines:\n{lines}\n"
                               f"(whole log: {log})")


def _policy_dir(lake: Lake, iteration: int, settings: TrainingSettings) -> Path:
    return lake.model_dir(iteration) if settings.full_fine_tuning else lake.adapter_dir(iteration)


def _start_from_previous(lake: Lake, iteration: int, settings: TrainingSettings) -> TrainingSettings:
    """Iteration N > 1 continues iteration N-1's policy: its adapter, or its fully fine-tuned model."""
    previous = _policy_dir(lake, iteration - 1, settings)
    marker = "config.json" if settings.full_fine_tuning else "adapter_config.json"
    if not (previous / marker).exists():
        raise ProxyRewardError(f"iteration {iteration} starts from iteration {iteration - 1}'s policy, but "
                               f"{previous} has none; train iteration {iteration - 1} first")
    if settings.full_fine_tuning:
        return dataclasses.replace(settings, model=dataclasses.replace(settings.model, path=str(previous)))
    return dataclasses.replace(settings, model=dataclasses.replace(settings.model, init_adapter=str(previous)))


def _finish(lake: Lake, iteration: int, settings: TrainingSettings, run_dir: Path, metrics: dict) -> dict:
    """Publish what the core left in the run folder and put its result in the run's metrics."""
    done = run_dir / "metrics.json"
    if not done.exists():
        raise ProxyRewardError(f"{done} is missing: the training core did not finish in {run_dir}")
    result = json.loads(done.read_text())
    result.pop("settings", None)
    target = _policy_dir(lake, iteration, settings)
    _publish(Path(result["policy"]), target)
    metrics.update(result, policy=str(target))
    if not settings.full_fine_tuning:
        metrics["adapter"] = str(target)
    return result


def train_iteration(lake: Lake, iteration: int, settings: TrainingSettings, tiny: TinySettings,
                    init_from_previous: bool = True, resume: bool = False, merged: bool = False,
                    prepare_only: bool = False, publish_only: bool = False, force: bool = False) -> dict:
    """Train iteration N's policy on its pairs (see `train`)."""
    from .training.core import reference_identity
    from .training.pairs import write_pairs

    rows = [] if publish_only else _pair_rows(lake, iteration)  # bad input fails before anything is written
    model = dataclasses.replace(settings.model, path=models.resolve(settings.model.path, tiny))
    settings = dataclasses.replace(settings, model=model)
    if init_from_previous and iteration > 1 and not model.init_adapter:
        settings = _start_from_previous(lake, iteration, settings)
    run_dir = lake.root / "runs" / f"iteration={iteration}" / "train"
    pairs_file = run_dir / "pairs.parquet"
    run_dir.mkdir(parents=True, exist_ok=True)
    with record_run(lake, iteration, "train", dataclasses.asdict(settings), force=force) as metrics:
        if publish_only:
            result = _finish(lake, iteration, settings, run_dir, metrics)
            say(f"iteration {iteration}: published {metrics['policy']}")
            return result
        ident = reference_identity(settings.model, settings.data)
        for r in rows:  # stored log-probs count only when they came from this same reference
            if any(r[k] != v for k, v in ident.items()):
                r["ref_chosen_logp"] = r["ref_rejected_logp"] = None
        truncated_prompts = training_prompts(rows, model.path, settings.data)
        write_pairs(rows, pairs_file)
        (run_dir / "reference.json").unlink(missing_ok=True)
        (run_dir / "metrics.json").unlink(missing_ok=True)
        config = run_dir / "settings.yaml"
        config.write_text(yaml.safe_dump(json.loads(json.dumps(dataclasses.asdict(settings)))))
        args = [str(pairs_file), str(run_dir), "--config", str(config), "--resume", str(resume).lower(),
                "--merged", str(merged).lower(), "--reference_only", str(prepare_only).lower()]
        try:
            run_core(args, run_dir / "train.log")
        finally:  # reference log-probs the core computed are kept, even when it failed later
            reference = _stored_reference(lake, iteration, run_dir, pairs_file)
        metrics.update(reference_computed=reference["computed"] if reference else None)
        if prepare_only:
            metrics.update(pairs_file=str(pairs_file), truncated_prompts=truncated_prompts)
            say(f"pairs with reference log-probs: {pairs_file}")
            return {"pairs_file": str(pairs_file)}
        result = _finish(lake, iteration, settings, run_dir, metrics)
        metrics.update(truncated_prompts=truncated_prompts)
    say(f"iteration {iteration}: trained on {result['pairs']} pairs, {result['global_step']} steps, "
          f"loss {result['metrics'].get('loss', float('nan')):.4f}; policy -> {metrics['policy']}")
    return result


def _stored_reference(lake: Lake, iteration: int, run_dir: Path, pairs_file: Path) -> dict | None:
    """The reference the core reported (reference.json), its new log-probs written back into `pairs`."""
    path = run_dir / "reference.json"
    reference = json.loads(path.read_text()) if path.exists() else None
    if reference and reference["computed"]:
        _store_reference(lake, iteration, pairs_file, reference)
    return reference


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
    publish_only: bool = False,
    force: bool = False,
    lake: str | None = None,
) -> dict:
    """Train the policy of iteration N with DPO (LoRA, or full fine-tuning) on that iteration's pairs.

    Args:
        iteration: whose pairs to train on; the adapter becomes the policy of iteration N.
        model: base weights (`tiny`, `smollm2`: the named offline models) and, optionally, an adapter to start from.
        lora: the adapter's shape (enabled false: full fine-tuning; the model lands in <lake>/models/iteration=N).
        dpo: loss and reference (precomputed: stored in `pairs` from the policy before training).
        optim: AdamW and schedule.
        data: tokenisation and batching.
        trainer: epochs, accumulation, devices, strategy (ddp/fsdp), precision, checkpoints, loggers.
        tiny: the tiny model, when model.path is `tiny`.
        init_from_previous: start from iteration N-1's policy (N > 1) unless model.init_adapter is set.
        resume: continue an interrupted run from its last checkpoint (every rank does); otherwise the run's old
            checkpoints are cleared first.
        merged: also export the merged full model (in the run folder, merged/).
        prepare_only: write the pairs file with its reference log-probs and stop (for launching the training
            core yourself, e.g. with torchrun or srun across nodes).
        publish_only: publish the policy that a training core you launched yourself left in the run folder, and
            record the run.
        force: train even on stale pairs (see `proxyreward lake lineage`).
        lake: lake root (default: PROXYREWARD_LAKE or the repository's datalake/).
    """
    settings = TrainingSettings(model=model, lora=lora, dpo=dpo, optim=optim, data=data, trainer=trainer)
    return train_iteration(Lake(lake), iteration, settings, tiny, init_from_previous=init_from_previous,
                           resume=resume, merged=merged, prepare_only=prepare_only, publish_only=publish_only,
                           force=force)
