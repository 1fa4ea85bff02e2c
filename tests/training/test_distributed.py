"""The training core on several ranks, for real: 2 CPU processes on gloo through the same entry a multi-GPU
or multi-node launch uses (`python -m proxyreward_pl.training`), FSDP's units on gloo, the loop with 2 ranks."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import REPO, write_case_pairs

pytestmark = pytest.mark.slow


def core(pairs: Path, out: Path, model: Path, devices: int, batch: int, *extra: str) -> dict:
    """Run the training core CLI; its metrics.json."""
    cmd = [sys.executable, "-m", "proxyreward_pl.training", str(pairs), str(out), "--model.path", str(model),
           "--lora.r", "4", "--lora.alpha", "8", "--optim.lr", "1e-3", "--optim.warmup_ratio", "0.25",
           "--data.max_length", "128", "--data.batch_size", str(batch), "--data.group_by_length", "false",
           "--trainer.epochs", "2", "--trainer.accumulate_grad_batches", "1", "--trainer.accelerator", "cpu",
           "--trainer.devices", str(devices), "--trainer.strategy", "ddp" if devices > 1 else "auto",
           "--trainer.loggers", "[csv]", "--trainer.progress_bar", "false", "--trainer.checkpoint_every_n_steps", "4",
           *extra]
    proc = subprocess.run(cmd, timeout=900, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


def adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "adapter" / "adapter_model.safetensors")


def learning_rates(out: Path) -> list[float]:
    if not (out / "logs" / "metrics.csv").exists():
        return []
    with open(out / "logs" / "metrics.csv") as fh:
        return [float(r["lr"]) for r in csv.DictReader(fh) if r.get("lr")]


@pytest.fixture(scope="module")
def runs(tiny_model_path, tmp_path_factory) -> dict[str, Path]:
    """32 pairs, 2 epochs: 2 ranks x batch 2, and 1 rank x batch 4 (the same data order)."""
    root = tmp_path_factory.mktemp("ranks")
    pairs = write_case_pairs(root / "p.parquet", 32)
    out = {"two": root / "two", "one": root / "one"}
    core(pairs, out["two"], tiny_model_path, 2, 2)
    core(pairs, out["one"], tiny_model_path, 1, 4)
    return {**out, "pairs": pairs}


def test_two_ranks_of_batch_b_train_the_adapter_of_one_rank_of_batch_2b(runs):
    two, one = adapter(runs["two"]), adapter(runs["one"])
    assert two.keys() == one.keys()
    for k in two:
        torch.testing.assert_close(two[k], one[k], atol=1e-5, rtol=0)
    assert json.loads((runs["two"] / "metrics.json").read_text())["world_size"] == 2


def test_warm_up_and_decay_span_the_steps_the_ranks_really_take(runs):
    """8 optimizer steps per epoch on 2 ranks, 16 in all: warm-up 4 steps, then linear decay to the end (a
    schedule sized for one device would expect 32 steps and end at two thirds of its peak)."""
    metrics = json.loads((runs["two"] / "metrics.json").read_text())
    assert metrics["global_step"] == 16
    lrs = learning_rates(runs["two"])
    assert len(lrs) == 16
    peak = lrs.index(max(lrs))
    assert max(lrs) == pytest.approx(1e-3) and 3 <= peak <= 4
    assert lrs[:peak] == sorted(lrs[:peak]) and lrs[peak:] == sorted(lrs[peak:], reverse=True)
    assert lrs[-1] <= 1e-3 / 11


def test_a_fresh_run_ignores_a_stale_checkpoint_and_resume_continues_it(runs, tiny_model_path):
    """Every rank follows --resume: without it the old checkpoints are cleared and the run starts over (the same
    adapter as before); with it, every rank continues from the last checkpoint (nothing is left to train)."""
    before = adapter(runs["two"])
    assert (runs["two"] / "checkpoints" / "last.ckpt").exists()
    again = core(runs["pairs"], runs["two"], tiny_model_path, 2, 2)
    assert again["global_step"] == 16
    for k, v in adapter(runs["two"]).items():
        torch.testing.assert_close(v, before[k], atol=1e-6, rtol=0)
    resumed = core(runs["pairs"], runs["two"], tiny_model_path, 2, 2, "--resume", "true")
    assert resumed["global_step"] == 16 and len(learning_rates(runs["two"])) == 0  # no step taken


_FSDP = textwrap.dedent("""
    import os, sys, torch, torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from proxyreward_pl.settings import DataSettings, LoraSettings, ModelSettings, TrainingSettings
    from proxyreward_pl.training.core import fsdp_unit
    from proxyreward_pl.training.module import DPOModule
    from proxyreward_pl.training.pairs import PairsDataModule

    def decoder_layers_only(module, recurse, nonwrapped_numel):
        return True if recurse else type(module).__name__.endswith("DecoderLayer")

    rank, world, model, pairs, out, policy = int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:7]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[7])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    settings = TrainingSettings(model=ModelSettings(path=model, dtype="bfloat16"), lora=LoraSettings(r=4, alpha=8))
    module = DPOModule(settings)
    module.configure_model()
    assert {p.dtype for n, p in module.model.named_parameters() if "lora_" in n} == {torch.float32}
    with torch.no_grad():  # LoRA B starts at zero: give it values so every LoRA matrix gets a gradient
        for n, p in module.model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.05)
    class Step(torch.nn.Module):  # as under Lightning, the root unit wraps the whole step, not just the model
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, batch):
            return self.module.compute(batch)[0]

    try:
        root = FSDP(Step(module), auto_wrap_policy=fsdp_unit if policy == "ours" else decoder_layers_only,
                    use_orig_params=False, device_id=torch.device("cpu"))  # as core._strategy
    except ValueError as exc:
        open(out, "w").write("refused: " + str(exc))
        sys.exit(0)
    dm = PairsDataModule(pairs, model, DataSettings(max_length=96, batch_size=4, group_by_length=False))
    dm.setup()
    batch = next(iter(dm.loader(dm.train, 4, train=False)))
    half = {k: v.chunk(world)[rank] if k not in ("input_ids", "attention_mask", "completion_mask") else
            torch.cat([v[:4].chunk(world)[rank], v[4:].chunk(world)[rank]]) for k, v in batch.items()}
    half["ref_chosen_logps"] = torch.full_like(half["ref_chosen_logps"], -50.0)
    half["ref_rejected_logps"] = torch.full_like(half["ref_rejected_logps"], -50.0)
    root(half).backward()
    torch.optim.SGD([p for p in root.parameters() if p.requires_grad], lr=1.0).step()  # weights move by -grad
    with FSDP.summon_full_params(root):
        lora = {n: p.detach().float().clone() for n, p in root.named_parameters() if "lora_" in n}
    if rank == 0:
        torch.save({n.replace("_fsdp_wrapped_module.", "").removeprefix("module."): v for n, v in lora.items()}, out)
""")


def _fsdp(tmp_path: Path, model: Path, pairs: Path, world: int, policy: str, port: int) -> Path:
    script, out = tmp_path / "fsdp.py", tmp_path / f"{policy}-{world}.pt"
    script.write_text(_FSDP)
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(world), str(model), str(pairs), str(out),
                               policy, str(port)], cwd=REPO) for r in range(world)]
    assert all(p.wait(timeout=600) == 0 for p in procs)
    return out


def test_fsdp_units_keep_float32_lora_apart_from_bfloat16_weights(tiny_model_path, tmp_path):
    """FSDP over a bfloat16 model with float32 LoRA matrices: decoder layers as the only units are refused (one
    flat parameter cannot hold both dtypes); ours wrap, and one step on 2 gloo ranks, each with half the batch,
    moves the LoRA weights as one process with all of it does."""
    pairs = write_case_pairs(tmp_path / "p.parquet", 8)
    refused = _fsdp(tmp_path, tiny_model_path, pairs, 1, "decoder", 29611)
    assert "uniform dtype" in refused.read_text()
    one = torch.load(_fsdp(tmp_path, tiny_model_path, pairs, 1, "ours", 29612))
    two = torch.load(_fsdp(tmp_path, tiny_model_path, pairs, 2, "ours", 29613))
    assert one.keys() == two.keys() and len(one) > 0
    from proxyreward_pl.settings import LoraSettings, ModelSettings, TrainingSettings
    from proxyreward_pl.training.module import DPOModule

    torch.manual_seed(0)  # the weights before the step, as the script made them
    start = DPOModule(TrainingSettings(model=ModelSettings(path=str(tiny_model_path), dtype="bfloat16"),
                                       lora=LoraSettings(r=4, alpha=8)))
    start.configure_model()
    before = {n: p.detach().float() for n, p in start.model.named_parameters() if "lora_" in n}
    moved = 0
    for k in one:
        name = next(n for n in before if k.endswith(n) or n.endswith(k.split("module.", 1)[-1]))
        if "lora_A" in name:  # B starts non-zero in the script, so A's gradient is non-zero
            moved += not torch.equal(one[k], before[name])
        torch.testing.assert_close(two[k], one[k], atol=2e-3, rtol=2e-2)  # bfloat16 forward in both
    assert moved > 0
