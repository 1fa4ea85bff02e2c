"""Writing a model folder so that no reader ever sees half of it: everything goes into a hidden folder beside
the destination, which then replaces it in one rename (a crash leaves the old folder, or none, never a mix)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path


def publish(out: Path, model, tokenizer, info_file: str | None = None, info: dict | None = None) -> Path:
    """`model` and `tokenizer` (save_pretrained) and, with `info_file`, `info` as JSON, into `out`, replacing
    what was there."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
        tokenizer.save_pretrained(tmp)
        model.save_pretrained(tmp)
        if info_file:
            (tmp / info_file).write_text(json.dumps(info, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
