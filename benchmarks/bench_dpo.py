"""DPO throughput and memory: proxyreward's LightningModule against TRL's DPOTrainer, in one run.

    python benchmarks/bench_dpo.py                # CPU: the offline tiny model   (make bench-dpo)
    python benchmarks/bench_dpo.py --gpu          # GPU: a random Qwen2.5-1.5B-shaped model, bf16, 2048-token pairs

Five configurations train the same model on the same pairs with the same LoRA settings, each in a fresh
subprocess (so peak memory is its own), one after another, for 1 and for 5 epochs (the paper's):
  trl             TRL DPOTrainer with its defaults (gradient checkpointing on)
  trl-no-ckpt     TRL with gradient checkpointing off
  trl-precompute  TRL, checkpointing off, `precompute_ref_log_probs=True` (reference pass at the start of each
                  run, not persisted): the peer of our persisted reference
  ours-otf        ours, reference = adapter disabled, on the fly
  ours-persisted  ours, reference log-probs persisted with the pairs (one pass, before training)
Per run: wall time per epoch *including* the reference pass (what a user waits for), and steady-state tokens/s
(training steps only: from the first step to the end). tokens counts every non-pad token of chosen and
rejected sequences (prompt included); peak memory is the process's peak RSS (CPU) or torch's peak allocation
(GPU) above its level once model and data were loaded. Both sides run float32 on CPU (TRL's bf16 default is
switched off there, as our CPU precision is 32-true) and bf16 on GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CONFIGS = ("trl", "trl-no-ckpt", "trl-precompute", "ours-otf", "ours-persisted")


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_pairs(path: Path, n: int, target_tokens: int, seed: int = 0) -> None:
    """Pairs over the bundled questions whose answers are runs of its statements, of varied lengths."""
    from proxyreward_pl.dataset import seed_records
    from proxyreward_pl.training.pairs import write_pairs

    rng = random.Random(seed)
    records = seed_records()
    words = [s for r in records for s, _ in r.statements]
    rows = []
    for i in range(n):
        r = records[i % len(records)]

        def answer() -> str:
            size = rng.randint(target_tokens // 8, target_tokens)  # words ~ tokens for this tokenizer
            out = []
            while sum(len(s.split()) for s in out) < size:
                out.append(rng.choice(words))
            return " ".join(out)

        rows.append({"prompt": r.text, "chosen": answer(), "rejected": answer()})
    write_pairs(rows, path)


def gpu_model(path: Path) -> None:
    """A randomly initialised Qwen2.5-1.5B-shaped model (no download): the tiny tokenizer, Qwen's shape."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from proxyreward_pl import tiny

    tok = AutoTokenizer.from_pretrained(tiny.cached())
    cfg = Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                      num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                      tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).to(torch.bfloat16).save_pretrained(path)
    tok.save_pretrained(path)


def count_tokens(pairs: Path, model: str, max_length: int) -> int:
    from transformers import AutoTokenizer

    from proxyreward_pl.training.pairs import DataSettings, read_pairs, tokenize_pairs

    tok = AutoTokenizer.from_pretrained(model)
    pairs_t = tokenize_pairs(tok, read_pairs(pairs), DataSettings(max_length=max_length))
    return sum(2 * len(p.prompt) + len(p.chosen) + len(p.rejected) for p in pairs_t)


def worker(args) -> dict:
    import torch

    torch.manual_seed(0)
    gpu = args.gpu
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    model_path, pairs, epochs = args.model, Path(args.pairs), int(args.epochs)
    lora = dict(r=16, alpha=32)
    result: dict = {"config": args.worker, "epochs": epochs}
    first_step: list[float] = []
    if args.worker.startswith("trl"):
        import trl
        from datasets import Dataset
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

        from proxyreward_pl.training.pairs import prompt_ids, read_pairs

        class FirstStep(TrainerCallback):
            def on_step_begin(self, *a, **kw):
                if not first_step:
                    first_step.append(time.perf_counter())

        tok = AutoTokenizer.from_pretrained(model_path)
        rows = [{"prompt": tok.decode(prompt_ids(tok, r["prompt"])), "chosen": r["chosen"], "rejected": r["rejected"]}
                for r in read_pairs(pairs)]
        config = trl.DPOConfig(
            output_dir=str(Path(args.out) / args.worker), per_device_train_batch_size=args.batch_size,
            gradient_accumulation_steps=args.accumulate, num_train_epochs=epochs, learning_rate=1e-5,
            max_length=args.max_length, report_to=[], save_strategy="no", logging_steps=10_000,
            bf16=gpu, use_cpu=not gpu, gradient_checkpointing=args.worker == "trl", dataloader_num_workers=0,
            precompute_ref_log_probs=args.worker == "trl-precompute",
        )
        peft_config = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=0.0, task_type="CAUSAL_LM",
                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                 "down_proj"])
        dtype = torch.bfloat16 if gpu else torch.float32
        trainer = trl.DPOTrainer(model=AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype), args=config,
                                 processing_class=tok, train_dataset=Dataset.from_list(rows), peft_config=peft_config,
                                 callbacks=[FirstStep()])
        base = torch.cuda.memory_allocated() if gpu else rss_mb()
        t0 = time.perf_counter()
        trainer.train()  # with precompute_ref_log_probs, the reference pass runs in here, before the first step
    else:
        import lightning as L

        from proxyreward_pl.settings import (
            DataSettings,
            DPOSettings,
            LoraSettings,
            ModelSettings,
            OptimSettings,
            TrainerSettings,
            TrainingSettings,
        )
        from proxyreward_pl.training.core import ensure_reference, prepare_run

        class FirstStep(L.Callback):
            def on_train_batch_start(self, *a, **kw):
                if not first_step:
                    first_step.append(time.perf_counter())

        persisted = args.worker == "ours-persisted"
        settings = TrainingSettings(
            model=ModelSettings(path=model_path, dtype="bfloat16" if gpu else "float32"),
            lora=LoraSettings(r=lora["r"], alpha=lora["alpha"]),
            dpo=DPOSettings(reference="precomputed" if persisted else "adapter_disabled"),
            optim=OptimSettings(lr=1e-5),
            data=DataSettings(max_length=args.max_length, batch_size=args.batch_size),
            trainer=TrainerSettings(epochs=epochs, accumulate_grad_batches=args.accumulate, loggers=(),
                                    progress_bar=False, checkpoint_every_n_steps=10**9,
                                    precision="bf16-mixed" if gpu else "32-true",
                                    accelerator="gpu" if gpu else "cpu", devices=1))
        t0 = time.perf_counter()
        if persisted:  # once per iteration, before training; part of the wall time
            ensure_reference(pairs, settings)
        module, dm, trainer = prepare_run(pairs, Path(args.out) / args.worker, settings)
        trainer.callbacks.append(FirstStep())
        base = torch.cuda.memory_allocated() if gpu else rss_mb()
        trainer.fit(module, datamodule=dm)
    if gpu:
        torch.cuda.synchronize()
    end = time.perf_counter()
    result["wall_seconds"] = end - t0
    result["step_seconds"] = end - first_step[0]
    if gpu:
        result["peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        result["peak_mb"] = peak_rss_mb() - base
    return result


def mfu(tokens_per_s: float, params: float, on_the_fly: bool, peak_flops: float) -> float:
    """LoRA training FLOPs per token: forward 2N + input-gradient backward 2N (frozen weights need no weight
    gradient), plus a 2N reference forward when it runs on the fly."""
    per_token = params * (6 if on_the_fly else 4)
    return tokens_per_s * per_token / peak_flops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--pairs-count", type=int, default=None)
    ap.add_argument("--max-length", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--accumulate", type=int, default=8)
    ap.add_argument("--out", default=str(REPO / ".cache" / "bench-dpo"))
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--epochs", default="1,5", help="comma-separated epoch counts; each config runs once per count")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM: 989)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--pairs", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)))
        return

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    max_length = args.max_length or (2048 if args.gpu else 512)
    n = args.pairs_count or (64 if args.gpu else 96)
    if args.gpu:
        model = out / "qwen2.5-1.5b-shape"
        if not (model / "config.json").exists():
            gpu_model(model)
    else:
        from proxyreward_pl import tiny

        model = tiny.cached()
    pairs_master = out / "pairs.parquet"
    make_pairs(pairs_master, n, target_tokens=max_length // 2)
    tokens = count_tokens(pairs_master, str(model), max_length)
    print(f"model {model.name}, {n} pairs, {tokens} tokens per epoch, batch {args.batch_size} x accumulate "
          f"{args.accumulate}, max_length {max_length}, torch threads {__import__('torch').get_num_threads()}")

    results: dict[str, dict] = {}
    for epochs in (int(e) for e in args.epochs.split(",")):
        print(f"\n{epochs} epoch(s):")
        for config in args.configs.split(","):
            pairs = out / f"pairs-{config}.parquet"
            pairs.write_bytes(pairs_master.read_bytes())  # each starts without reference log-probs
            cmd = [sys.executable, __file__, "--worker", config, "--model", str(model), "--pairs", str(pairs),
                   "--max-length", str(max_length), "--batch-size", str(args.batch_size),
                   "--accumulate", str(args.accumulate), "--out", str(out), "--epochs", str(epochs)]
            proc = subprocess.run(cmd + (["--gpu"] if args.gpu else []), capture_output=True, text=True,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                print(f"{config}: failed\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
                continue
            r = json.loads(line[len("RESULT "):])
            r["tokens_per_s"] = tokens * epochs / r["step_seconds"]
            r["wall_per_epoch"] = r["wall_seconds"] / epochs
            results[f"{config}@{epochs}"] = r
            print(f"{config:>16}: {r['wall_per_epoch']:7.1f} s/epoch (reference pass included)  "
                  f"{r['tokens_per_s']:8.0f} tokens/s in steps  peak +{r['peak_mb']:7.0f} MB")
        print(f"ratios, {epochs} epoch(s) (ours / TRL; wall per epoch: TRL / ours, higher is better for ours):")
        for ours in ("ours-otf", "ours-persisted"):
            for peer in ("trl", "trl-no-ckpt", "trl-precompute"):
                a, b = results.get(f"{ours}@{epochs}"), results.get(f"{peer}@{epochs}")
                if a and b:
                    print(f"  {ours:>15} vs {peer:<15} wall x{b['wall_per_epoch'] / a['wall_per_epoch']:.2f}   "
                          f"tokens/s x{a['tokens_per_s'] / b['tokens_per_s']:.2f}   "
                          f"peak memory x{a['peak_mb'] / max(b['peak_mb'], 1e-9):.2f}")
    if args.gpu:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        with torch.device("meta"):
            params = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model))
                         .parameters())
        for name, r in results.items():
            on_the_fly = not name.startswith(("ours-persisted", "trl-precompute"))
            value = 100 * mfu(r["tokens_per_s"], params, on_the_fly, args.peak_tflops * 1e12)
            print(f"  MFU {name:>15}: {value:.1f} %")
    (out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
