"""Tiny models built offline: a byte-level BPE tokenizer trained on local text and a few-million-parameter
Llama, saved with `save_pretrained` so every consumer loads them through the real
`AutoTokenizer/AutoModelForCausalLM.from_pretrained(path)` path. Nothing is downloaded.

A Llama config is used because transformers 5 keeps a `tokenizer.json` as saved for it (for `qwen2` it
swaps in Qwen's own pre-tokenizer). Builds are cached under `.cache/tiny-models/<hash of the config and
corpus>`, written to a temporary folder and renamed into place, so a crash never leaves half a model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import random
import time
from pathlib import Path

from .checkpoints import publish
from .console import say
from .paths import CACHE_DIR, PROMPTS_DIR, SEED_DIR
from .settings import TinySettings

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Standard-library modules whose documentation joins the tokenizer corpus ("other text on the machine").
_STDLIB_TEXT = ("collections", "json", "re", "itertools", "functools", "pathlib", "statistics", "textwrap")


def read_dialogues(path: str | Path) -> list[list[dict]]:
    """Chat dialogues from a JSONL file of {"messages": [{"role": ..., "content": ...}, ...]} lines."""
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not JSON ({exc.msg})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("messages"), list):
                raise ValueError(f"{path}:{n}: messages: expected a list of chat messages")
            out.append(rec["messages"])
    return out


def _train_records(seed_dir: Path) -> list[dict]:
    """The bundled dataset's train meta-questions: an eval question or statement is never trained on, not
    even by the tiny model's warm-up, so evaluation measures what the loop taught."""
    records = []
    for f in sorted(seed_dir.glob("*.jsonl")):
        records += [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in records if r.get("split", "train") == "train"]


def corpus_texts(seed_dir: Path = SEED_DIR, corpus: str | None = None) -> list[str]:
    """The local text the tokenizer learns from: the corpus's dialogues (or the bundled dataset's train
    questions and statements, and the prompt templates, which the tiny judge reads), stdlib docs. A corpus's
    model (the closed world's policy) leaves the templates out, so that editing a prompt does not rebuild it."""
    texts = []
    if corpus:
        texts.extend(m["content"] for d in read_dialogues(corpus) for m in d)
    else:
        for rec in _train_records(seed_dir):
            texts.append(rec["text"])
            texts.extend(s["statement"] for s in rec.get("proxy_questions", []))
        texts.extend(p.read_text(encoding="utf-8") for p in sorted(PROMPTS_DIR.glob("*")) if p.is_file())
    for name in _STDLIB_TEXT:
        mod = importlib.import_module(name)
        texts.append(mod.__doc__ or "")
        texts.extend(getattr(mod, a).__doc__ or "" for a in sorted(dir(mod)) if not a.startswith("_"))
    return [t for t in texts if t.strip()]


def warmup_dialogues(seed_dir: Path = SEED_DIR, corpus: str | None = None) -> list[list[dict]]:
    """Chat examples for warm-up: the corpus's dialogues, or each bundled train meta-question answered by its
    true statements as prose."""
    if corpus:
        return read_dialogues(corpus)
    dialogues = []
    for rec in _train_records(seed_dir):
        facts = [s["statement"] for s in rec.get("proxy_questions", []) if s["answer"]]
        dialogues.append([{"role": "user", "content": rec["text"]},
                          {"role": "assistant", "content": " ".join(facts)}])
    return dialogues


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2,
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _warm_up(model, tokenizer, cfg: TinySettings) -> float:
    import torch

    rng = random.Random(cfg.seed)
    dialogues = warmup_dialogues(corpus=cfg.corpus)
    examples = []
    for d in dialogues:
        ids = tokenizer.apply_chat_template(d, tokenize=True, return_dict=False)
        examples.append(list(ids)[: cfg.warmup_max_tokens])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.warmup_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * (1 - s / cfg.warmup_steps))
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(cfg.warmup_steps):
        batch = rng.sample(examples, min(cfg.warmup_batch_size, len(examples)))
        width = max(map(len, batch))
        ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        mask = torch.zeros_like(ids)
        for i, ex in enumerate(batch):
            ids[i, : len(ex)] = torch.tensor(ex)
            mask[i, : len(ex)] = 1
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    return loss.item()


def build(out: Path, config: TinySettings = TinySettings()) -> Path:
    """Train the tokenizer, build (and warm up) the tiny Llama, and save both under OUT.

    Args:
        out: output folder (replaced if it exists).
        config: the model's shape and warm-up.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out)
    t0 = time.time()
    torch.manual_seed(config.seed)
    tokenizer = train_tokenizer(corpus_texts(corpus=config.corpus), config.vocab_size)
    model_cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads, max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(model_cfg)
    loss = _warm_up(model, tokenizer, config) if config.warmup_steps else None
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    info = {"config": dataclasses.asdict(config), "parameters": sum(p.numel() for p in model.parameters()),
            "warmup_final_loss": loss, "build_seconds": round(time.time() - t0, 1)}
    publish(out, model, tokenizer, "proxyreward_tiny.json", info)
    say(f"tiny model: {info['parameters'] / 1e6:.2f}M parameters, vocab {len(tokenizer)}, "
          f"warm-up loss {loss if loss is None else round(loss, 3)}, {info['build_seconds']} s -> {out}")
    return out


def tiny_model(out: str, tiny: TinySettings = TinySettings()) -> Path:
    """Build an offline tiny tokenizer + Llama model and save it with save_pretrained.

    Args:
        out: output folder.
        tiny: shape and warm-up of the model.
    """
    return build(Path(out), tiny)


def config_hash(config: TinySettings) -> str:
    # the corpus counts by its content (hashed below), not its path: a moved corpus reuses the model
    shape = {k: v for k, v in dataclasses.asdict(config).items() if k != "corpus"}
    h = hashlib.sha256(json.dumps(shape, sort_keys=True).encode())
    for t in corpus_texts(corpus=config.corpus):
        h.update(t.encode())
    return h.hexdigest()[:12]


def cached(config: TinySettings = TinySettings(), cache_dir: Path | None = None) -> Path:
    """The tiny model for `config`, built once and reused (keyed by config and corpus)."""
    path = (cache_dir or CACHE_DIR / "tiny-models") / config_hash(config)
    if not (path / "proxyreward_tiny.json").exists():
        build(path, config)
    return path
