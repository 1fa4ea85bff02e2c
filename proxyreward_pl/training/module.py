"""DPO with LoRA as a LightningModule.

One concatenated forward scores chosen and rejected answers together; the LM head runs only on answer
tokens (`losses.fused_sequence_logps`). The reference is either log-probs persisted with the pairs
(`reference="precomputed"`, the default: computed once, before any update, by `reference_logps`) or
the same model with its adapter disabled, on the fly. Checkpoints hold only the adapter, the optimizer
and the RNG state, so a run resumed mid-epoch retraces an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import lightning as L
import torch

from ..settings import LoraSettings, ModelSettings, TrainingSettings
from .losses import dpo_loss, fused_sequence_logps, sequence_logps, sft_loss

FSDP_UNIT = "_proxyreward_fsdp_unit"
"""Marks a module FSDP wraps on its own (`core.fsdp_unit`): the LoRA matrices."""


def load_policy(settings: ModelSettings, lora: LoraSettings, device: str = "cpu", trainable: bool = True):
    """The base model with a LoRA adapter (fresh, or `init_adapter` continued); with `lora.enabled` false, the
    model itself, every weight trainable (full fine-tuning)."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(settings.dtype)
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    base = AutoModelForCausalLM.from_pretrained(settings.path, dtype=dtype, **settings.extra)
    if settings.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    if settings.init_adapter:
        return PeftModel.from_pretrained(base, settings.init_adapter, is_trainable=trainable)
    if not lora.enabled:
        base.requires_grad_(trainable)
        return base
    cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                     target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(base, cfg)


def _plain_head(base) -> bool:
    """Logits are exactly lm_head(hidden): no soft-capping or scaling (else the full-logits path is used)."""
    cfg = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    return all(getattr(cfg, a, None) in (None, 1.0) for a in ("final_logit_softcapping", "logit_scale"))


def policy_logps(model, batch: dict[str, torch.Tensor], chunk_size: int = 1024) -> torch.Tensor:
    """Sum of answer-token log-probs for every row of the batch: Tensor[2B]."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    labels = batch["input_ids"][:, 1:]
    mask = batch["completion_mask"][:, 1:]
    if _plain_head(base):
        out = base.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 use_cache=False)
        head = base.get_output_embeddings()
        return fused_sequence_logps(out.last_hidden_state[:, :-1], head.weight, head.bias, labels, mask, chunk_size)
    logits = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    return sequence_logps(logits[:, :-1], labels, mask, chunk_size)


@torch.no_grad()
def reference_logps(model, loader, chunk_size: int = 1024) -> dict[int, tuple[float, float]]:
    """Reference log-probs of every pair in `loader`, from `model` as it is now (eval mode, no grad):
    {pair index: (chosen, rejected)}."""
    was_training = model.training
    model.eval()
    out = {}
    device = next(model.parameters()).device
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        logps = policy_logps(model, batch, chunk_size).double().cpu()
        chosen, rejected = logps.chunk(2)
        for i, c, r in zip(batch["index"].tolist(), chosen.tolist(), rejected.tolist(), strict=True):
            out[i] = (c, r)
    model.train(was_training)
    return out


class DPOModule(L.LightningModule):
    def __init__(self, settings: TrainingSettings):
        super().__init__()
        self.settings = settings
        self.model_settings, self.lora = settings.model, settings.lora
        self.dpo, self.optim = settings.dpo, settings.optim
        self.model = None
        self.strict_loading = False  # checkpoints hold the adapter only
        self._t0: float | None = None
        self.save_hyperparameters({k: dataclasses.asdict(getattr(settings, k))
                                   for k in ("model", "lora", "dpo", "optim")})

    def configure_model(self) -> None:
        if self.model is None:
            self.model = load_policy(self.model_settings, self.lora, device=str(self.device))
            self.model.train()  # from_pretrained leaves eval mode; dropout (if any) behaves as in training
            for name, module in self.model.named_modules():
                if "lora_" in name and next(module.children(), None) is None and module._parameters:
                    setattr(module, FSDP_UNIT, True)

    # -- the step ---------------------------------------------------------------------------------
    def reference(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference's log-probs of the batch's (chosen, rejected) answers: stored with the pairs
        (`dpo.reference: precomputed`), or the same model with its adapter disabled."""
        n = batch["index"].shape[0]
        if self.dpo.precomputed:
            ref_c, ref_r = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
            if torch.isnan(ref_c).any() or torch.isnan(ref_r).any():
                raise ValueError("reference='precomputed' but some pairs have no ref_chosen_logp/ref_rejected_logp; "
                                 "compute them first (training.core.ensure_reference) or use "
                                 "reference='adapter_disabled'")
            return ref_c, ref_r
        with torch.no_grad(), self.model.disable_adapter():  # settings refuse it without an adapter
            ref = policy_logps(self.model, batch, self.model_settings.head_chunk_size)
        return ref[:n], ref[n:]

    def compute(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The batch's mean loss and TRL-named metrics."""
        n = batch["index"].shape[0]
        logps = policy_logps(self.model, batch, self.model_settings.head_chunk_size)
        chosen, rejected = logps[:n], logps[n:]
        ref_c, ref_r = (r.to(chosen.dtype) for r in self.reference(batch))
        losses, rc, rr = dpo_loss(chosen, rejected, ref_c, ref_r, self.dpo.beta, self.dpo.loss_type,
                                  self.dpo.label_smoothing)
        if self.dpo.sft_weight:
            lengths = batch["completion_mask"][:n].sum(-1)
            losses = losses + self.dpo.sft_weight * sft_loss(chosen, lengths)
        loss = losses.mean()
        metrics = {"loss": loss.detach(), "rewards/chosen": rc.mean(), "rewards/rejected": rr.mean(),
                   "rewards/accuracies": (rc > rr).float().mean(), "rewards/margins": (rc - rr).mean(),
                   "logps/chosen": chosen.detach().mean(), "logps/rejected": rejected.detach().mean()}
        return loss, {k: v.float() for k, v in metrics.items()}

    def _step(self, batch: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
        loss, metrics = self.compute(batch)
        self.log_dict({f"{prefix}{k}": v for k, v in metrics.items()}, batch_size=batch["index"].shape[0],
                      sync_dist=self.trainer.world_size > 1, on_step=prefix == "", on_epoch=prefix != "")
        return loss

    def training_step(self, batch, batch_idx):
        if self._t0 is None:
            self._t0 = time.perf_counter()
        return self._step(batch, "")

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        tokens = batch["attention_mask"].sum().item()
        self.log("tokens_per_second", tokens / max(now - self._t0, 1e-9), batch_size=1)
        self.log("lr", self.lr_schedulers().get_last_lr()[0], batch_size=1)
        self._t0 = now

    def validation_step(self, batch, batch_idx):
        return self._step(batch, "eval_")

    # -- optimisation -------------------------------------------------------------------------------
    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.optim.lr, betas=self.optim.betas,
                                weight_decay=self.optim.weight_decay)
        # Lightning counts the optimizer steps this run will really take: devices, nodes, accumulation, max_steps
        total = int(self.trainer.estimated_stepping_batches)
        warmup = int(round(self.optim.warmup_ratio * total))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, warmup, total, self.optim.schedule))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- checkpoints: adapter, optimizer, RNG ---------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in names}
        checkpoint["rng"] = {"torch": torch.get_rng_state(),
                             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        rng = checkpoint.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])

    def save_policy(self, out_dir: str | Path, merged: bool = False) -> Path:
        """The trained policy: the adapter in PEFT format in OUT/adapter (PeftModel.from_pretrained, vLLM
        --lora-modules), and with `merged` the merged full model in OUT/merged; after full fine-tuning, the
        model in OUT/model. Returns the adapter's (or the model's) folder."""
        out_dir = Path(out_dir)
        if self.settings.full_fine_tuning:
            self.model.save_pretrained(out_dir / "model")
            return out_dir / "model"
        self.model.save_pretrained(out_dir / "adapter")
        if merged:
            self.model.merge_and_unload(safe_merge=True).save_pretrained(out_dir / "merged")
        return out_dir / "adapter"


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    if warmup and step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0 - progress
