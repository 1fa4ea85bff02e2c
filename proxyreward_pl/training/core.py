"""The training core: DPO with LoRA on a pairs file, with no lake and no duckdb.

    python -m proxyreward_pl.training pairs.parquet runs/x --model.path MODEL [--trainer.strategy ddp ...]

runs on any machine with torch, transformers, peft, lightning and pyarrow. `proxyreward train` wraps it
with the lake (pairs of an iteration in, reference log-probs and a `runs` row back).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch

from ..identity import adapter_identity, model_identity, tokens_digest
from ..settings import (
    DataSettings,
    DPOSettings,
    LoraSettings,
    ModelSettings,
    OptimSettings,
    TrainerSettings,
    TrainingSettings,
)
from .module import FSDP_UNIT, DPOModule, load_policy, policy_logps, reference_logps
from .pairs import PairsDataModule, read_pairs, tokenization_id, write_pairs


def is_rank_zero() -> bool:
    """This process is the launching rank (not a child a distributed launcher started)."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def _strategy(name: str):
    if name != "fsdp":
        return name
    from lightning.pytorch.strategies import FSDPStrategy

    # Every unit is uniform (fsdp_unit), so flat parameters need not keep the original ones (use_orig_params),
    # which also breaks FSDP's unsharding of tied embeddings after a step on torch 2.13.
    return FSDPStrategy(auto_wrap_policy=fsdp_unit, use_orig_params=False, sharding_strategy="FULL_SHARD")


def fsdp_unit(module: torch.nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
    """FSDP's wrap policy: every decoder layer is a unit (it unshards on its own), and so is every LoRA matrix
    (`DPOModule.configure_model` marks them). A flat parameter must hold one dtype and one requires_grad: the
    LoRA matrices (trainable, float32) are kept apart from the frozen bfloat16 weights of their layer, which
    FSDP would otherwise refuse or hold in float32 (litgpt PR #1538, LLaMA-Factory PR #10157)."""
    if recurse:
        return True
    return type(module).__name__.endswith("DecoderLayer") or getattr(module, FSDP_UNIT, False)



def _loggers(names: tuple[str, ...], out: Path) -> list:
    from lightning.pytorch import loggers as pl_loggers

    made = []
    for name in names:
        if name == "csv":
            made.append(pl_loggers.CSVLogger(out, name="logs", version=""))
        elif name == "tensorboard":
            try:
                made.append(pl_loggers.TensorBoardLogger(out, name="tb", version=""))
            except ModuleNotFoundError:
                pass
        elif name == "wandb":
            made.append(pl_loggers.WandbLogger(save_dir=str(out)))
        elif name == "mlflow":
            made.append(pl_loggers.MLFlowLogger(save_dir=str(out)))
    return made


def reference_identity(model: ModelSettings, data: DataSettings) -> dict[str, str]:
    """What reference log-probs depend on, by content: the base weights, the adapter, the tokenisation."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model.path)
    return {"ref_model": model_identity(model.path), "ref_adapter": adapter_identity(model.init_adapter),
            "ref_tokenization": tokenization_id(tokenizer, data)}


def ensure_reference(pairs_path: str | Path, settings: TrainingSettings, device: str | None = None) -> dict | None:
    """With `dpo.reference: precomputed`, fill `ref_chosen_logp`/`ref_rejected_logp` of a pairs file from the
    policy before training (base + `init_adapter`, or the untrained model for full fine-tuning). A row keeps
    the log-probs it has only when they were computed for its very token ids (`ref_tokens`): a pair whose
    texts changed under the same ids is computed again. Returns how many were computed and the reference's
    identity (None for a reference computed on the fly)."""
    if not settings.dpo.precomputed:
        return None
    model, data = settings.model, settings.data
    rows = read_pairs(pairs_path)
    dm = PairsDataModule(pairs_path, model.path, data)
    dm.setup()
    tokens = [tokens_digest(p.prompt, p.chosen, p.rejected) for p in dm.train]
    missing = [i for i, r in enumerate(rows) if r.get("ref_chosen_logp") is None or
               r.get("ref_rejected_logp") is None or r.get("ref_tokens") != tokens[i]]
    ident = reference_identity(model, data)
    if not missing:
        return {"computed": 0, **ident}
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    policy = load_policy(model, settings.lora, device=device, trainable=False).to(device)
    loader = dm.loader([dm.train[i] for i in missing], max(1, data.eval_batch_size or data.batch_size * 4),
                       train=False)
    refs = reference_logps(policy, loader, model.head_chunk_size)
    for i in missing:
        rows[i]["ref_chosen_logp"], rows[i]["ref_rejected_logp"] = refs[i]
        rows[i]["ref_tokens"] = tokens[i]
    write_pairs(rows, pairs_path)
    return {"computed": len(missing), **ident}


@torch.no_grad()
def likelihood_trend(module: DPOModule, dm: PairsDataModule, batch_size: int) -> dict[str, float]:
    """How training moved the log-probability of the pairs' answers, per answer token, against the reference:
    a falling chosen likelihood is the usual first sign of a degenerating DPO run (answers that win the
    margin by losing probability everywhere)."""
    model = module.model
    was_training = model.training
    model.eval()
    sums = {"chosen": 0.0, "rejected": 0.0}
    for batch in dm.loader(dm.train, batch_size, train=False):
        batch = {k: v.to(module.device) for k, v in batch.items()}
        n = batch["index"].shape[0]
        logps = policy_logps(model, batch, module.model_settings.head_chunk_size).double()
        ref = torch.cat([r.double() for r in module.reference(batch)])
        per_token = (logps - ref) / batch["completion_mask"].sum(-1).clamp(min=1)
        sums["chosen"] += per_token[:n].sum().item()
        sums["rejected"] += per_token[n:].sum().item()
    model.train(was_training)
    return {f"{k}_logp_change_per_token": v / max(len(dm.train), 1) for k, v in sums.items()}


def prepare_run(pairs: str | Path, out_dir: Path, settings: TrainingSettings,
                val_pairs: str | Path | None = None) -> tuple[DPOModule, PairsDataModule, L.Trainer]:
    """The module, data and Lightning trainer of a run, not yet fitted."""
    trainer = settings.trainer
    on_gpu = torch.cuda.is_available() and trainer.accelerator in ("auto", "gpu", "cuda")
    precision = trainer.precision if trainer.precision != "auto" else ("bf16-mixed" if on_gpu else "32-true")
    dm = PairsDataModule(pairs, settings.model.path, settings.data, val_path=val_pairs)
    dm.setup()
    module = DPOModule(settings)

    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt_dir = out_dir / "checkpoints"
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=trainer.checkpoint_every_n_steps,
                                 save_last=True, save_top_k=0)
    pl_trainer = L.Trainer(
        max_epochs=trainer.epochs, max_steps=trainer.max_steps, accelerator=trainer.accelerator,
        devices=trainer.devices, num_nodes=trainer.num_nodes, strategy=_strategy(trainer.strategy),
        precision=precision, accumulate_grad_batches=trainer.accumulate_grad_batches,
        gradient_clip_val=trainer.gradient_clip_val, log_every_n_steps=trainer.log_every_n_steps,
        logger=_loggers(trainer.loggers, out_dir) or False, callbacks=[checkpoint],
        enable_progress_bar=trainer.progress_bar, enable_model_summary=False, use_distributed_sampler=False,
        limit_val_batches=1.0 if val_pairs else 0, num_sanity_val_steps=0, default_root_dir=out_dir,
    )
    return module, dm, pl_trainer


def _save(module: DPOModule, pl_trainer: L.Trainer, out_dir: Path, merged: bool) -> Path | None:
    """Rank 0 saves the policy; under FSDP every rank first gathers the full weights (a collective)."""
    from lightning.pytorch.strategies import FSDPStrategy

    if isinstance(pl_trainer.strategy, FSDPStrategy):
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(pl_trainer.strategy.model, writeback=False):
            return module.save_policy(out_dir, merged) if pl_trainer.global_rank == 0 else None
    return module.save_policy(out_dir, merged) if pl_trainer.global_rank == 0 else None


def train_pairs(pairs: str | Path, out: str | Path, settings: TrainingSettings, val_pairs: str | Path | None = None,
                resume: bool = False, merged: bool = False) -> dict:
    """Train the policy with DPO on a pairs file: a LoRA adapter in OUT/adapter (PEFT format), or after full
    fine-tuning the model in OUT/model; the result in OUT/metrics.json.

    Every rank follows `resume`: without it, the run folder's old checkpoints are cleared first (by the
    launching rank, before the others start), so no rank can pick up a stale one."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    last = out_dir / "checkpoints" / "last.ckpt"
    if is_rank_zero():
        if not resume:
            shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
        (out_dir / "reference.json").write_text(json.dumps(ensure_reference(pairs, settings)))
        if val_pairs:
            ensure_reference(val_pairs, settings)
    L.seed_everything(settings.trainer.seed, workers=True, verbose=False)  # after the reference pass: same LoRA init

    module, dm, pl_trainer = prepare_run(pairs, out_dir, settings, val_pairs)
    pl_trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resume and last.exists() else None)

    data = settings.data
    result = {"global_step": pl_trainer.global_step, "epochs": pl_trainer.current_epoch,
              "pairs": len(dm.train), "truncated_pairs": dm.truncated, "precision": str(pl_trainer.precision),
              "world_size": pl_trainer.world_size,
              "metrics": {k: float(v) for k, v in pl_trainer.callback_metrics.items()}}
    if pl_trainer.world_size == 1:  # sharded or replicated runs skip it: one rank alone cannot run the model
        result["trend"] = likelihood_trend(module, dm, max(1, data.eval_batch_size or data.batch_size * 4))
    saved = _save(module, pl_trainer, out_dir, merged)
    if saved is not None:
        if merged and not settings.full_fine_tuning:
            dm.tokenizer.save_pretrained(out_dir / "merged")
        if settings.full_fine_tuning:
            dm.tokenizer.save_pretrained(saved)
        result["policy"] = str(saved)
        result["full_fine_tuning"] = settings.full_fine_tuning
        (out_dir / "metrics.json").write_text(json.dumps({**result, "settings": asdict(settings)}, indent=2,
                                                         default=str))
    return result


def cli(
    pairs: str,
    out: str,
    model: ModelSettings,
    lora: LoraSettings = LoraSettings(),
    dpo: DPOSettings = DPOSettings(),
    optim: OptimSettings = OptimSettings(),
    data: DataSettings = DataSettings(),
    trainer: TrainerSettings = TrainerSettings(),
    val_pairs: str | None = None,
    resume: bool = False,
    merged: bool = False,
    reference_only: bool = False,
) -> dict | None:
    """Train a LoRA adapter (or, with --lora.enabled false, the whole model) with DPO on a pairs file.

    Args:
        pairs: Parquet/JSONL with prompt, chosen, rejected (and optionally ref_chosen_logp/ref_rejected_logp).
        out: run folder: checkpoints/, logs/, adapter/ (or model/), reference.json, metrics.json.
        model: base weights, init adapter, dtype, gradient checkpointing.
        lora: the adapter's shape (enabled false: full fine-tuning).
        dpo: loss and reference.
        optim: AdamW and schedule.
        data: tokenisation and batching.
        trainer: Lightning settings.
        val_pairs: held-out pairs, evaluated each epoch (eval_ metrics).
        resume: continue from OUT/checkpoints/last.ckpt (every rank does); otherwise old checkpoints are cleared.
        merged: also save the merged full model in OUT/merged.
        reference_only: fill the pairs file's reference log-probs (dpo.reference precomputed) and stop.
    """
    settings = TrainingSettings(model=model, lora=lora, dpo=dpo, optim=optim, data=data, trainer=trainer)
    if reference_only:
        Path(out).mkdir(parents=True, exist_ok=True)
        reference = ensure_reference(pairs, settings)
        (Path(out) / "reference.json").write_text(json.dumps(reference))
        return reference
    return train_pairs(pairs, out, settings, val_pairs=val_pairs, resume=resume, merged=merged)


def main(argv: list[str] | None = None) -> None:
    import sys

    from jsonargparse import auto_cli

    from ..cliconfig import rewrite_config

    auto_cli(cli, args=rewrite_config(list(sys.argv[1:] if argv is None else argv), cli))
