"""Hugging Face transformers in-process: batched generation and continuation scoring; always available.

Choice requests whose prompts share a prefix (the statements of one response) compute it once: its KV cache
(`past_key_values`) serves every member's rest of the prompt (`EngineSettings.prefix_sharing`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from .base import Engine, Request, Result
from .prefix import common_prefix, prefix_groups


class HFEngine(Engine):
    kind = "hf"

    def __init__(self, settings, cache=None):
        super().__init__(settings, cache)
        self._model = self._tokenizer = None
        self._adapters: dict[tuple, str] = {}  # (path, version) -> peft adapter name

    def _load(self):
        if self._model is None:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            device = "cuda" if torch.cuda.is_available() else "cpu"
            dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(
                self.settings.dtype, torch.bfloat16 if device == "cuda" else torch.float32)
            self._tokenizer = AutoTokenizer.from_pretrained(self.settings.model, padding_side="left")
            if self._tokenizer.pad_token_id is None:
                self._tokenizer.pad_token = self._tokenizer.eos_token
            self._model = AutoModelForCausalLM.from_pretrained(self.settings.model, dtype=dtype).to(device).eval()
            self.events.append("load")
        return self._model, self._tokenizer

    def hand_back(self) -> None:
        if self._model is None:
            return
        import gc

        import torch

        self._model = self._tokenizer = None
        self._adapters.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.events.append("hand_back")

    def release(self) -> None:
        self.hand_back()
        super().release()

    def _with_adapter(self, adapter: str | None, version: str | None = None):
        """The model with `adapter` active (loaded once per path and version: a retrained adapter at the same
        path is loaded afresh), or the base model."""
        model, _ = self._load()
        if adapter is None:
            return model if not self._adapters else _Disabled(model)
        from peft import PeftModel

        name = self._adapters.get((adapter, version))
        if name is None:
            name = f"a{len(self._adapters)}"
            if not self._adapters:
                self._model = model = PeftModel.from_pretrained(model, adapter, adapter_name=name)
            else:
                model.load_adapter(adapter, adapter_name=name)
            self._adapters[(adapter, version)] = name
        model.set_adapter(name)
        return model

    def _prompt(self, req: Request) -> str:
        _, tok = self._load()
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template(req.messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in req.messages)

    def _run(self, requests: list[Request], on_result: Callable[[Result], None]) -> None:
        groups: dict[tuple, list[Request]] = {}
        for r in requests:  # batch requests that share sampling settings and adapter
            groups.setdefault(((r.adapter, r.adapter_version), r.choices is None, r.max_tokens, r.temperature,
                               r.top_p, r.n), []).append(r)
        for (adapter, generate, *_), group in groups.items():
            if not generate:
                self._score_all(group, adapter, on_result)
                continue
            group.sort(key=lambda r: len(self._prompt(r)))
            for i in range(0, len(group), self.settings.batch_size):
                batch = group[i: i + self.settings.batch_size]
                try:
                    results = self._generate(batch, adapter)
                except Exception as exc:  # a batch that breaks fails its requests, not the run
                    results = [Result(r, error=f"{type(exc).__name__}: {exc}") for r in batch]
                for res in results:
                    on_result(res)

    def _generate(self, batch: list[Request], adapter: tuple) -> list[Result]:
        import torch

        model = self._with_adapter(*adapter)
        _, tok = self._load()
        first = batch[0]
        enc = tok([self._prompt(r) for r in batch], return_tensors="pt", padding=True,
                  add_special_tokens=False).to(self._model.device)
        if first.seed is not None:
            torch.manual_seed(first.seed)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=first.max_tokens, do_sample=first.temperature > 0,
                                 temperature=first.temperature if first.temperature > 0 else None,
                                 top_p=first.top_p if first.temperature > 0 else None,
                                 num_return_sequences=first.n, pad_token_id=tok.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:].view(len(batch), first.n, -1)
        results = []
        for i, req in enumerate(batch):
            texts, reasons, counts = [], [], []
            for seq in new[i]:
                ids = seq.tolist()
                stop = tok.eos_token_id in ids
                ids = ids[: ids.index(tok.eos_token_id)] if stop else [t for t in ids if t != tok.pad_token_id]
                texts.append(tok.decode(ids, skip_special_tokens=True))
                reasons.append("stop" if stop else "length")
                counts.append(len(ids) + int(stop))
            results.append(Result(req, texts=texts, finish_reasons=reasons, completion_tokens=counts,
                                  prompt_tokens=int(enc["attention_mask"][i].sum())))
        return results

    def _encode(self, req: Request) -> _Encoded:
        _, tok = self._load()
        prompt = self._prompt(req)
        p_ids, *continued = tok([prompt] + [prompt + c for c in req.choices], add_special_tokens=False).input_ids
        rows: list[list[int]] = []
        targets, first = [], len(p_ids)
        for ci, c_ids in enumerate(continued):
            start = max(common_prefix(p_ids, c_ids), 1)  # a choice may merge with the prompt's last token
            first = min(first, start)
            need = c_ids[:-1]  # the inputs whose hidden states predict the choice's tokens
            k = next((k for k, row in enumerate(rows) if row[:len(need)] == need or need[:len(row)] == row), None)
            if k is None:
                k = len(rows)
                rows.append(need)
            elif len(need) > len(rows[k]):
                rows[k] = need
            targets += [(ci, k, pos - 1, c_ids[pos]) for pos in range(start, len(c_ids))]
        return _Encoded(p_ids, rows or [p_ids], targets, len(req.choices), first - 1)

    def _score_all(self, requests: list[Request], adapter: tuple, on_result: Callable[[Result], None]) -> None:
        """Choice scores for every request, a batch at a time. With prefix sharing, requests whose prompts share
        a prefix (a response's statements) compute it once and reuse its KV cache; the rest go whole."""
        encoded = [self._encode(r) for r in requests]
        whole = list(range(len(requests)))
        batches: list[tuple[str, list]] = []
        if self.settings.prefix_sharing:
            shareable = [i for i, e in enumerate(encoded) if e.shareable >= 1]
            whole = sorted(set(whole) - set(shareable))
            groups = prefix_groups([encoded[i].prompt for i in shareable], [encoded[i].shareable for i in shareable])
            batches += [("shared", b) for b in _batches([(p, [shareable[i] for i in members]) for p, members in groups],
                                                        encoded, self.settings.batch_size)]
        whole.sort(key=lambda i: len(encoded[i].prompt))
        batches += [("whole", whole[i: i + self.settings.batch_size])
                    for i in range(0, len(whole), self.settings.batch_size)]
        for kind, batch in batches:
            members = [i for _, group in batch for i in group] if kind == "shared" else batch
            try:
                if kind == "shared":
                    scores, cached = self._score_shared(batch, encoded, adapter)
                else:
                    scores, cached = self._score_whole([encoded[i] for i in batch], adapter), [0] * len(batch)
            except Exception as exc:  # a batch that breaks fails its requests, not the run
                for i in members:
                    on_result(Result(requests[i], error=f"{type(exc).__name__}: {exc}"))
                continue
            for i, lp, hit in zip(members, scores, cached, strict=True):
                on_result(Result(requests[i], choice_logprobs=dict(zip(requests[i].choices, lp, strict=True)),
                                 prompt_tokens=len(encoded[i].prompt), cached_prompt_tokens=hit))

    def _score_whole(self, batch: list[_Encoded], adapter: tuple) -> list[list[float]]:
        """log p(choice | prompt) summed over the choice's tokens, each prompt read whole: one row serves every
        choice whose tokens extend the same inputs (all the single-token ones, and one longer)."""
        rows, targets = [], []
        for qi, e in enumerate(batch):
            targets += [(qi, ci, len(rows) + k, pos, token) for ci, k, pos, token in e.targets]
            rows += e.rows
        ids, mask = self._padded(rows)
        model = self._with_adapter(*adapter)
        hidden = self._hidden(model, input_ids=ids, attention_mask=mask)
        return self._choice_sums(model, hidden, targets, [e.n_choices for e in batch])

    def _score_shared(self, batch: list[tuple[int, list[int]]], encoded: list[_Encoded],
                      adapter: tuple) -> tuple[list[list[float]], list[int]]:
        """As `_score_whole`, but each group's shared prefix is computed once (one row per group) and its KV cache
        is reused by every row of its members, which hold only what follows the prefix.

        Prefixes are right-padded: positions are given explicitly, so a suffix continues its own prefix."""
        import torch

        prefixes = [encoded[group[0]].prompt[:p] for p, group in batch]
        rows, row_group, targets, requests, cached = [], [], [], [], []
        for g, (p, group) in enumerate(batch):
            for k, i in enumerate(group):
                e, qi = encoded[i], len(requests)
                requests.append(e)
                cached.append(p if k else 0)  # the group's first member pays for the prefix
                targets += [(qi, ci, len(rows) + r, pos - p, token) for ci, r, pos, token in e.targets]
                rows += [row[p:] for row in e.rows]
                row_group += [g] * len(e.rows)
        model = self._with_adapter(*adapter)
        device = self._model.device
        p_ids, p_mask = self._padded(prefixes)
        cache = self._decoder_call(model, input_ids=p_ids, attention_mask=p_mask, use_cache=True).past_key_values
        index = torch.tensor(row_group, device=device)
        cache.batch_select_indices(index)
        s_ids, s_mask = self._padded(rows)
        lengths = torch.tensor([p for p, _ in batch], device=device)[index]
        positions = lengths[:, None] + torch.arange(s_ids.shape[1], device=device)[None, :]
        mask = torch.cat([p_mask[index], s_mask], dim=1)
        hidden = self._hidden(model, input_ids=s_ids, attention_mask=mask, position_ids=positions,
                              past_key_values=cache, use_cache=True)
        return self._choice_sums(model, hidden, targets, [e.n_choices for e in requests]), cached

    def _padded(self, rows: list[list[int]]):
        """Right-padded ids and mask: positions stay aligned with the unpadded rows."""
        import torch

        _, tok = self._load()
        ids = torch.full((len(rows), max(map(len, rows))), tok.pad_token_id)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return ids.to(self._model.device), mask.to(self._model.device)

    def _decoder_call(self, model, **kwargs):
        import torch

        with torch.no_grad():
            return _decoder(model)(**kwargs)

    def _hidden(self, model, **kwargs):
        return self._decoder_call(model, **kwargs).last_hidden_state

    def _choice_sums(self, model, hidden, targets: list[tuple], n_choices: list[int]) -> list[list[float]]:
        """Per request, per choice: the sum of log p(token) over its targets (only their positions go through
        the LM head)."""
        import torch

        device = hidden.device
        rows = torch.tensor([t[2] for t in targets], device=device)
        positions = torch.tensor([t[3] for t in targets], device=device)
        with torch.no_grad():
            logp = _head(model)(hidden[rows, positions]).float().log_softmax(-1).cpu()
        token_lp = logp.gather(-1, torch.tensor([t[4] for t in targets])[:, None]).squeeze(-1).tolist()
        sums = [[0.0] * n for n in n_choices]
        seen = [[False] * n for n in n_choices]
        for (qi, ci, *_), lp in zip(targets, token_lp, strict=True):
            sums[qi][ci] += lp
            seen[qi][ci] = True
        return [[v if ok else -math.inf for v, ok in zip(s, k, strict=True)] for s, k in zip(sums, seen, strict=True)]


@dataclass
class _Encoded:
    """A choice request in tokens: the prompt's ids, the rows of inputs that predict every choice token, and per
    choice token (choice, row, position of the hidden state that predicts it, token)."""

    prompt: list[int]
    rows: list[list[int]]
    targets: list[tuple[int, int, int, int]]
    n_choices: int
    shareable: int
    """How much of the prompt a shared prefix may hold: every hidden state that predicts a choice token must
    come from this request's own rows."""


def _batches(groups: list[tuple[int, list[int]]], encoded: list[_Encoded], size: int) -> list[list]:
    """Groups packed into batches of about `size` rows (a row per member and per multi-token choice); a group
    larger than that is split, each part computing the prefix again."""
    def rows(i: int) -> int:
        return len(encoded[i].rows)

    parts = []
    for p, members in groups:
        part, used = [], 0
        for i in members:
            if part and used + rows(i) > size:
                parts.append((p, part))
                part, used = [], 0
            part.append(i)
            used += rows(i)
        parts.append((p, part))
    batches, batch, used = [], [], 0
    for p, part in parts:
        n = sum(rows(i) for i in part)
        if batch and used + n > size:
            batches.append(batch)
            batch, used = [], 0
        batch.append((p, part))
        used += n
    if batch:
        batches.append(batch)
    return batches


def _base(model):
    inner = model.model if isinstance(model, _Disabled) else model
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner


def _decoder(model):
    decoder = _base(model).get_decoder()
    if isinstance(model, _Disabled):
        return lambda **kw: model.call(decoder, **kw)
    return decoder


def _head(model):
    return _base(model).get_output_embeddings()


class _Disabled:
    """The base model of a PeftModel for one call (adapters off)."""

    def __init__(self, model):
        self.model = model

    def generate(self, *args, **kwargs):
        with self.model.disable_adapter():
            return self.model.generate(*args, **kwargs)

    def __call__(self, *args, **kwargs):
        with self.model.disable_adapter():
            return self.model(*args, **kwargs)

    def call(self, fn, **kwargs):
        with self.model.disable_adapter():
            return fn(**kwargs)
