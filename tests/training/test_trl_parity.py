"""Our DPO loss and metrics agree with TRL's DPOTrainer on the same tiny model, data and LoRA weights."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM

from proxyreward_pl.settings import DataSettings, DPOSettings, LoraSettings, ModelSettings, TrainingSettings
from proxyreward_pl.training.module import DPOModule
from proxyreward_pl.training.pairs import PairsDataModule, prompt_ids, read_pairs
from tests.helpers import write_case_pairs

trl = pytest.importorskip("trl")


def _perturb_lora(model, seed: int = 0) -> None:
    """LoRA B starts at zero (policy == reference); give it seeded noise so the loss is not just ln 2."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def test_loss_and_metrics_match_trl(tiny_model_path, tmp_path):
    from datasets import Dataset

    pairs = write_case_pairs(tmp_path / "p.parquet", 12)
    lora = LoraSettings(r=4, alpha=8)
    ours = DPOModule(TrainingSettings(model=ModelSettings(path=str(tiny_model_path)), lora=lora,
                                      dpo=DPOSettings(beta=0.1, reference="adapter_disabled")))
    ours.configure_model()
    _perturb_lora(ours.model)
    ours.model.eval()

    dm = PairsDataModule(pairs, tiny_model_path, DataSettings(max_length=10_000, batch_size=12))
    dm.setup()
    tok = dm.tokenizer
    rows = [{"prompt": tok.decode(prompt_ids(tok, r["prompt"])), "chosen": r["chosen"], "rejected": r["rejected"]}
            for r in read_pairs(pairs)]
    config = trl.DPOConfig(output_dir=str(tmp_path / "trl"), per_device_eval_batch_size=12, bf16=False,
                           report_to=[], max_length=None, gradient_checkpointing=False, beta=0.1, use_cpu=True)
    peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=0.0,
                             target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    trainer = trl.DPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_path), args=config,
                             processing_class=tok, peft_config=peft_config,
                             train_dataset=Dataset.from_list(rows), eval_dataset=Dataset.from_list(rows))
    # TRL built its own adapter (reference = adapter disabled, as ours): give it our LoRA weights
    theirs = dict(trainer.model.named_parameters())
    with torch.no_grad():
        for name, p in ours.model.named_parameters():
            if "lora_" in name:
                theirs[name].copy_(p)
    assert "ref" not in trainer.model.peft_config
    # the same token ids on both sides
    processed = trainer.eval_dataset
    for mine, theirs in zip(dm.train, processed, strict=True):
        assert mine.prompt == theirs["prompt_ids"]
        assert mine.chosen == theirs["chosen_ids"] and mine.rejected == theirs["rejected_ids"]

    trl_metrics = trainer.evaluate()
    batch = next(iter(dm.loader(dm.train, 12, train=False)))
    with torch.no_grad():
        loss, metrics = ours.compute(batch)
    assert loss.item() == pytest.approx(trl_metrics["eval_loss"], rel=1e-4)
    assert abs(loss.item() - 0.6931) > 1e-3  # the perturbation really moved the policy off the reference
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                 "logps/rejected"):
        assert metrics[name].item() == pytest.approx(trl_metrics[f"eval_{name}"], rel=1e-4, abs=1e-5), name
