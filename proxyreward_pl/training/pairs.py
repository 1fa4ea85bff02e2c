"""Preference pairs for DPO: read from a plain Parquet/JSONL file, tokenised, batched by length.

The training core reads files, not the lake, so it runs where duckdb is absent (a GPU box with only torch,
transformers, peft, lightning and pyarrow). A pairs file has one row per pair:

    prompt             str     the user turn (rendered with the tokenizer's chat template)
    chosen, rejected   str     the two answers
    (any other column)         kept as it is (the lake's `question_id`, say)
    ref_chosen_logp    float   optional; persisted reference log-probs
    ref_rejected_logp  float   optional
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Sampler

from ..settings import DataSettings

REQUIRED = ("prompt", "chosen", "rejected")


def read_pairs(path: str | Path) -> list[dict]:
    """Rows of a pairs file (.parquet, .jsonl/.json), checked for the required columns."""
    path = Path(path)
    if path.suffix == ".parquet":
        rows = pq.read_table(path).to_pylist()
    elif path.suffix in (".jsonl", ".json"):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        raise ValueError(f"{path}: pairs must be .parquet or .jsonl")
    for i, row in enumerate(rows):
        for col in REQUIRED:
            if not isinstance(row.get(col), str):
                raise ValueError(f"{path}: row {i}: {col} must be a string")
    return rows


def write_pairs(rows: list[dict], path: str | Path) -> None:
    pq.write_table(pa.Table.from_pylist(rows), path)


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The prompt as the policy sees it at generation time: chat template with the generation prompt."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            tokenize=True, return_dict=False)
        return list(ids)
    return tokenizer(prompt, add_special_tokens=True).input_ids


def answer_ids(tokenizer, answer: str) -> list[int]:
    return tokenizer(answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]


def tokenization_id(tokenizer, config: DataSettings) -> str:
    """A hash of everything that decides token ids and truncation (stored beside reference log-probs)."""
    h = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode() if hasattr(tokenizer, "backend_tokenizer")
                       else repr(tokenizer.get_vocab()).encode())
    h.update(str(getattr(tokenizer, "chat_template", "")).encode())
    h.update(f"{config.max_length}/{config.max_prompt_length}/{tokenizer.eos_token_id}".encode())
    return h.hexdigest()[:16]


@dataclass
class TokenizedPair:
    index: int
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    truncated: bool
    ref_chosen: float = math.nan
    ref_rejected: float = math.nan

    @property
    def length(self) -> int:
        return len(self.prompt) + max(len(self.chosen), len(self.rejected))


def tokenize_pairs(tokenizer, rows: list[dict], config: DataSettings) -> list[TokenizedPair]:
    """Keep the prompt's start (at most max_prompt_length tokens) and cut each answer's end to fit."""
    max_prompt = config.max_prompt_length or config.max_length // 2
    out = []
    for i, row in enumerate(rows):
        p = prompt_ids(tokenizer, row["prompt"])
        c, r = answer_ids(tokenizer, row["chosen"]), answer_ids(tokenizer, row["rejected"])
        truncated = len(p) > max_prompt or len(p) + max(len(c), len(r)) > config.max_length
        p = p[:max_prompt]
        room = config.max_length - len(p)
        ref_c, ref_r = row.get("ref_chosen_logp"), row.get("ref_rejected_logp")
        out.append(TokenizedPair(i, p, c[:room], r[:room], truncated,
                                 math.nan if ref_c is None else float(ref_c),
                                 math.nan if ref_r is None else float(ref_r)))
    return out


def collate(pairs: list[TokenizedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """One batch of 2B right-padded sequences, chosen rows first: input_ids, attention_mask,
    completion_mask (1 on answer tokens), plus index and reference log-probs per pair."""
    seqs = [p.prompt + p.chosen for p in pairs] + [p.prompt + p.rejected for p in pairs]
    starts = [len(p.prompt) for p in pairs] * 2
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    comp = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (s, start) in enumerate(zip(seqs, starts, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        attn[i, : len(s)] = 1
        comp[i, start: len(s)] = 1
    return {
        "input_ids": ids, "attention_mask": attn, "completion_mask": comp,
        "index": torch.tensor([p.index for p in pairs]),
        "ref_chosen_logps": torch.tensor([p.ref_chosen for p in pairs], dtype=torch.float64),
        "ref_rejected_logps": torch.tensor([p.ref_rejected for p in pairs], dtype=torch.float64),
    }


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Seeded batches of similar length, split across ranks, resumable mid-epoch.

    Each epoch: shuffle (seed, epoch), cut into windows of 64 batches, sort each window by length, cut into
    batches, shuffle the batches. Rank r takes batches r, r+W, ... (the list is padded by repeating its
    start so every rank has as many). `progress()` -> (epoch, batches already done in it) is read when
    iteration starts, so a run resumed mid-epoch continues where the checkpoint was taken."""

    def __init__(self, lengths: list[int], batch_size: int, *, seed: int = 0, shuffle: bool = True,
                 group_by_length: bool = True, rank: int = 0, world_size: int = 1,
                 progress: Callable[[], tuple[int, int]] | None = None):
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self.shuffle, self.group, self.rank, self.world = shuffle, group_by_length, rank, world_size
        self.progress = progress

    def global_batches(self, epoch: int) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        order = list(range(len(self.lengths)))
        if self.shuffle:
            rng.shuffle(order)
        if self.group:
            window = self.batch_size * 64
            order = [i for w in range(0, len(order), window)
                     for i in sorted(order[w: w + window], key=lambda j: -self.lengths[j])]
        batches = [order[i: i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.group and self.shuffle:
            rng.shuffle(batches)
        if len(batches) % self.world:
            batches += batches[: self.world - len(batches) % self.world]
        return batches

    def __len__(self) -> int:
        return math.ceil(math.ceil(len(self.lengths) / self.batch_size) / self.world)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, done = self.progress() if self.progress else (0, 0)
        yield from self.global_batches(epoch)[self.rank:: self.world][done:]


class PairsDataModule(L.LightningDataModule):
    """Pairs from `train_path` (and optionally `val_path`) for a tokenizer at `tokenizer_path`."""

    def __init__(self, train_path: str | Path, tokenizer_path: str | Path, config: DataSettings = DataSettings(),
                 val_path: str | Path | None = None):
        super().__init__()
        self.train_path, self.val_path = Path(train_path), (Path(val_path) if val_path else None)
        self.tokenizer_path, self.config = str(tokenizer_path), config
        self.train: list[TokenizedPair] = []
        self.val: list[TokenizedPair] = []
        self.tokenizer = None

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is not None:
            return
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.train = tokenize_pairs(self.tokenizer, read_pairs(self.train_path), self.config)
        if self.val_path:
            self.val = tokenize_pairs(self.tokenizer, read_pairs(self.val_path), self.config)

    @property
    def truncated(self) -> int:
        return sum(p.truncated for p in self.train)

    def _progress(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 0
        return trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.completed

    def loader(self, pairs: list[TokenizedPair], batch_size: int, train: bool) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        sampler = LengthGroupedBatchSampler(
            [p.length for p in pairs], batch_size, seed=self.config.seed, shuffle=train,
            group_by_length=self.config.group_by_length, rank=rank, world_size=world,
            progress=self._progress if train else None)
        pad = self.tokenizer.pad_token_id
        # Its own generator: creating the iterator must not draw from the global RNG, or a resumed run's
        # dropout masks would drift from an uninterrupted one's.
        return DataLoader(pairs, batch_sampler=sampler, collate_fn=lambda b: collate(b, pad),
                          num_workers=self.config.num_workers,
                          generator=torch.Generator().manual_seed(self.config.seed))

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.train, self.config.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.val, self.config.eval_batch_size or self.config.batch_size, train=False)
