"""DPO with LoRA on the tiny model: what moves, what learns, persisted references, resume, DDP, export."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import textwrap

import lightning as L
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from proxyreward_pl.settings import (
    DataSettings,
    DPOSettings,
    LoraSettings,
    ModelSettings,
    OptimSettings,
    SettingsError,
)
from proxyreward_pl.training.core import ensure_reference, prepare_run, train_pairs
from proxyreward_pl.training.module import load_policy, policy_logps
from proxyreward_pl.training.pairs import PairsDataModule, read_pairs
from tests.helpers import REPO, small_settings, write_case_pairs


def lora_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}


def test_only_lora_parameters_move_and_first_loss_is_ln2(tiny_model_path, tmp_path):
    pairs = write_case_pairs(tmp_path / "p.parquet", 24)
    s = dataclasses.replace(small_settings(tiny_model_path, max_steps=3), optim=OptimSettings(lr=1e-3, warmup_ratio=0))
    ensure_reference(pairs, s)
    module, dm, trainer = prepare_run(pairs, tmp_path / "run", s)
    module.configure_model()
    before = {k: v.detach().clone() for k, v in module.model.named_parameters()}
    # policy == reference at the start (LoRA B is zero): the DPO loss is exactly ln 2
    batch = next(iter(dm.train_dataloader()))
    with torch.no_grad():
        first, _ = module.compute(batch)
    assert first.item() == pytest.approx(math.log(2), abs=1e-6)
    trainer.fit(module, datamodule=dm)
    moved = {k for k, v in module.model.named_parameters() if not torch.equal(v, before[k])}
    assert moved and all("lora_" in k for k in moved)
    assert any("lora_B" in k for k in moved)
    for k, v in module.model.named_parameters():
        if "lora_" not in k:
            assert torch.equal(v, before[k]), k  # bitwise


def test_learnable_preferences_reach_held_out_accuracy(tiny_model_path, tmp_path):
    train = write_case_pairs(tmp_path / "train.parquet", 96)
    val = write_case_pairs(tmp_path / "val.parquet", 32, offset=500)
    s = dataclasses.replace(small_settings(tiny_model_path, epochs=2), dpo=DPOSettings(beta=0.1),
                            optim=OptimSettings(lr=2e-3, warmup_ratio=0.1))
    res = train_pairs(train, tmp_path / "run", s, val_pairs=val)
    log = (tmp_path / "run" / "logs" / "metrics.csv").read_text().splitlines()
    header = log[0].split(",")
    losses = [float(r.split(",")[header.index("loss")]) for r in log[1:] if r.split(",")[header.index("loss")]]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-4)
    assert sum(losses[-5:]) / 5 < 0.5 * math.log(2)
    assert res["metrics"]["eval_rewards/accuracies"] > 0.9
    assert res["metrics"]["eval_rewards/margins"] > 0
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected",
                 "tokens_per_second"):
        assert name in header


def test_persisted_reference_equals_on_the_fly_and_is_not_recomputed(tiny_model_path, tmp_path):
    pairs = write_case_pairs(tmp_path / "p.parquet", 10)
    model, lora = ModelSettings(path=str(tiny_model_path)), LoraSettings(r=4)
    s = dataclasses.replace(small_settings(tiny_model_path), lora=lora, data=DataSettings(max_length=128))
    first = ensure_reference(pairs, s)
    assert first["computed"] == 10 and first["ref_tokenization"]
    stored = read_pairs(pairs)
    # on the fly: the same model with its adapter disabled, one pair at a time
    dm = PairsDataModule(pairs, tiny_model_path, DataSettings(max_length=128, batch_size=1))
    dm.setup()
    policy = load_policy(model, lora)
    with torch.no_grad(), policy.disable_adapter():
        for batch in dm.loader(dm.train, 1, train=False):
            c, r = policy_logps(policy, batch)
            i = batch["index"].item()
            # fp32 sums over ~100s of tokens: 1e-5 relative (batch padding changes the summation order)
            assert c.item() == pytest.approx(stored[i]["ref_chosen_logp"], rel=1e-5)
            assert r.item() == pytest.approx(stored[i]["ref_rejected_logp"], rel=1e-5)
    mtime = pairs.stat().st_mtime_ns
    again = ensure_reference(pairs, s)
    assert again["computed"] == 0 and pairs.stat().st_mtime_ns == mtime
    assert ensure_reference(pairs, dataclasses.replace(s, dpo=DPOSettings(reference="adapter_disabled"))) is None


def test_on_the_fly_reference_trains_like_persisted(tiny_model_path, tmp_path):
    pairs = write_case_pairs(tmp_path / "p.parquet", 16)
    s = dataclasses.replace(small_settings(tiny_model_path, max_steps=3), optim=OptimSettings(lr=1e-3, warmup_ratio=0))
    got = {}
    for ref in ("precomputed", "adapter_disabled"):
        train_pairs(pairs, tmp_path / ref, dataclasses.replace(s, dpo=DPOSettings(reference=ref)))
        got[ref] = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path),
                                             tmp_path / ref / "adapter")
    a, b = lora_state(got["precomputed"]), lora_state(got["adapter_disabled"])
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


class _Crash(L.Callback):
    def __init__(self, at_step: int):
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at_step:
            raise RuntimeError("simulated crash")


def test_resume_mid_epoch_matches_uninterrupted(tiny_model_path, tmp_path):
    pairs = write_case_pairs(tmp_path / "p.parquet", 40)
    s = dataclasses.replace(
        small_settings(tiny_model_path, epochs=2, accumulate_grad_batches=2, checkpoint_every_n_steps=1),
        lora=LoraSettings(r=4, alpha=8, dropout=0.1),  # dropout: the RNG state must be restored too
        optim=OptimSettings(lr=1e-3, warmup_ratio=0.2, schedule="cosine"))
    train_pairs(pairs, tmp_path / "full", s)

    ensure_reference(pairs, s)
    module, dm, trainer = prepare_run(pairs, tmp_path / "cut", s)
    trainer.callbacks.append(_Crash(at_step=4))  # 10 batches/epoch, 5 steps/epoch: mid first epoch...
    L.seed_everything(0, workers=True, verbose=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.fit(module, datamodule=dm)
    assert (tmp_path / "cut" / "checkpoints" / "last.ckpt").exists()
    ckpt = torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 4 and all("lora_" in k for k in ckpt["state_dict"])
    assert ckpt["optimizer_states"]
    res = train_pairs(pairs, tmp_path / "cut", s, resume=True)
    assert res["global_step"] == 10
    full = lora_state(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path),
                                                tmp_path / "full" / "adapter"))
    cut = lora_state(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path),
                                               tmp_path / "cut" / "adapter"))
    for k in full:
        torch.testing.assert_close(cut[k], full[k], atol=1e-5, rtol=0)


def test_adapter_loads_in_peft_and_merged_export(tiny_model_path, tmp_path):
    pairs = write_case_pairs(tmp_path / "p.parquet", 8)
    s = dataclasses.replace(small_settings(tiny_model_path, max_steps=2), optim=OptimSettings(lr=1e-2, warmup_ratio=0))
    train_pairs(pairs, tmp_path / "run", s, merged=True)
    adapter = tmp_path / "run" / "adapter"
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and set(cfg["target_modules"]) == set(LoraSettings().target_modules)
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path), adapter)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "merged")
    ids = torch.tensor([[5, 17, 99, 250]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, peft_model(ids).logits, atol=1e-4, rtol=1e-4)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
        assert not torch.allclose(base(ids).logits, merged(ids).logits)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["global_step"] == 2 and metrics["settings"]["lora"]["r"] == 4


def test_trainer_settings_round_trip_through_the_cli(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "proxyreward_pl.training", "--help"], capture_output=True,
                          text=True, check=True)
    assert "pairs out" in proc.stdout.replace("\n", " ").replace("  ", " ") or "PAIRS" in proc.stdout.upper()
    for flag in ("--model.path", "--lora.r", "--dpo.beta", "--optim.lr", "--data.max_length",
                 "--trainer.strategy", "--resume"):
        assert flag in proc.stdout


def test_training_core_runs_without_duckdb_or_polars(tiny_model_path, tmp_path):
    """The GPU box has no duckdb or polars: the core must train from a Parquet file without them."""
    pairs = write_case_pairs(tmp_path / "p.parquet", 8)
    code = textwrap.dedent(f"""
        import sys
        sys.modules["duckdb"] = None   # any import of them now fails
        sys.modules["polars"] = None
        from proxyreward_pl.training.core import main
        main([{str(pairs)!r}, {str(tmp_path / "run")!r}, "--config", "configs/tiny.yaml",
              "--model.path", {str(tiny_model_path)!r}, "--trainer.max_steps", "2", "--data.max_length", "96"])
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=600, cwd=str(REPO))
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").exists()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["global_step"] == 2


def test_gradient_checkpointing_trains_the_same_adapter(tiny_model_path, tmp_path):
    pairs = write_case_pairs(tmp_path / "p.parquet", 8)
    s = dataclasses.replace(small_settings(tiny_model_path, max_steps=2), optim=OptimSettings(lr=1e-2, warmup_ratio=0))
    states = {}
    for gc in (False, True):
        model = ModelSettings(path=str(tiny_model_path), gradient_checkpointing=gc)
        train_pairs(pairs, tmp_path / f"gc{gc}", dataclasses.replace(s, model=model))
        states[gc] = lora_state(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path),
                                                          tmp_path / f"gc{gc}" / "adapter"))
    assert any(v.abs().sum() > 0 for k, v in states[True].items() if "lora_B" in k)  # LoRA did train
    for k in states[False]:
        torch.testing.assert_close(states[True][k], states[False][k], atol=1e-5, rtol=1e-4)


def test_full_fine_tuning_trains_the_base_weights_against_the_untrained_model(tiny_model_path, tmp_path):
    pairs = write_case_pairs(tmp_path / "p.parquet", 8)
    s = dataclasses.replace(small_settings(tiny_model_path, max_steps=2), lora=LoraSettings(enabled=False),
                            optim=OptimSettings(lr=1e-3, warmup_ratio=0))
    result = train_pairs(pairs, tmp_path / "run", s)
    assert result["full_fine_tuning"] and not (tmp_path / "run" / "adapter").exists()
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    untouched = dict(base.named_parameters())
    moved = [n for n, p in trained.named_parameters() if not torch.equal(p, untouched[n])]
    assert any(".mlp." in n for n in moved) and any(".self_attn." in n for n in moved)
    # the reference is the model before training, computed once and stored with the pairs
    dm = PairsDataModule(pairs, tiny_model_path, s.data)
    dm.setup()
    with torch.no_grad():
        batch = next(iter(dm.loader(dm.train, 8, train=False)))
        logps = policy_logps(base, batch).tolist()
    stored = read_pairs(pairs)
    for i, c in zip(batch["index"].tolist(), logps[:8], strict=True):
        assert stored[i]["ref_chosen_logp"] == pytest.approx(c, rel=1e-5)
    with pytest.raises(SettingsError, match="dpo.reference"):
        dataclasses.replace(s, dpo=DPOSettings(reference="adapter_disabled"))
