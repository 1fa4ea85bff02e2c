"""Content identities: what a model, an adapter or a file *is*, not where it lies. Lineage compares them to tell
current from stale, and stored reference log-probs count only for the reference they came from.

Pure file hashing (no torch, no duckdb): the training core and the lake both use it.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

_BLOCK = 1 << 24


def file_digest(*paths: Path) -> str:
    """SHA-256 of the files' bytes, in order (first 12 hex digits)."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(_BLOCK), b""):
                h.update(block)
    return h.hexdigest()[:12]


def weights_digest(folder: Path, pattern: str = "*.safetensors") -> str:
    """The content of a folder's weight files (an adapter, a fine-tuned model)."""
    return file_digest(*sorted(Path(folder).glob(pattern)))


def _safetensors_header(path: Path) -> bytes:
    with open(path, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        return fh.read(size)


def model_identity(path: str) -> str:
    """A base model by its config and its weight index (every weight file's name, size and tensor table), read
    without the weights themselves; a name that is no local folder (a served model, a hub id) is itself."""
    folder = Path(path)
    if not (folder / "config.json").exists():
        return f"name:{path}"
    h = hashlib.sha256((folder / "config.json").read_bytes())
    for f in sorted(folder.glob("*.safetensors")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
        h.update(_safetensors_header(f))
    index = folder / "model.safetensors.index.json"
    if index.exists():
        h.update(json.dumps(json.loads(index.read_text()), sort_keys=True).encode())
    return f"model:{h.hexdigest()[:12]}"


def adapter_identity(path: str | None) -> str:
    """A LoRA adapter by its weights ('' for none)."""
    return f"adapter:{weights_digest(Path(path), 'adapter_model.safetensors')}" if path else ""


def tokens_digest(*sequences: list[int]) -> str:
    """The token ids of a pair (prompt, chosen, rejected): stored reference log-probs count only for these."""
    h = hashlib.sha256()
    for seq in sequences:
        h.update(struct.pack(f"<{len(seq) + 1}q", len(seq), *seq))
    return h.hexdigest()[:16]
