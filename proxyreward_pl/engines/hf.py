"""Hugging Face transformers in-process: batched generation and continuation scoring; always available."""

from __future__ import annotations

import math
from collections.abc import Callable

from .base import Engine, Request, Result


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
            group.sort(key=lambda r: len(self._prompt(r)))
            for i in range(0, len(group), self.settings.batch_size):
                batch = group[i: i + self.settings.batch_size]
                try:
                    results = self._generate(batch, adapter) if generate else self._score(batch, adapter)
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

    def _score(self, batch: list[Request], adapter: tuple) -> list[Result]:
        """log p(choice | prompt) summed over the choice's tokens, for every choice of every request.

        One sequence per request serves every single-token choice (read off the prompt's last position);
        a choice of several tokens gets a sequence of its own."""
        import torch

        model = self._with_adapter(*adapter)
        _, tok = self._load()
        rows: list[list[int]] = []
        targets: list[tuple[int, int, int, int, int]] = []  # (request, choice, row, position, token)
        prompt_lengths = []
        for qi, req in enumerate(batch):
            prompt = self._prompt(req)
            p_ids = tok(prompt, add_special_tokens=False).input_ids
            prompt_lengths.append(len(p_ids))
            shared = len(rows)
            rows.append(p_ids)
            for ci, choice in enumerate(req.choices):
                c_ids = tok(prompt + choice, add_special_tokens=False).input_ids
                start = next((i for i, (a, b) in enumerate(zip(p_ids, c_ids, strict=False)) if a != b),
                             min(len(p_ids), len(c_ids)))
                if start == len(p_ids) and len(c_ids) == start + 1:
                    targets.append((qi, ci, shared, start, c_ids[start]))
                    continue
                rows.append(c_ids)
                targets += [(qi, ci, len(rows) - 1, pos, c_ids[pos]) for pos in range(max(start, 1), len(c_ids))]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), tok.pad_token_id)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):  # right padding: positions stay aligned with the unpadded prompt
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        row_idx = torch.tensor([t[2] for t in targets])
        pos_idx = torch.tensor([t[3] - 1 for t in targets])  # the hidden state that predicts the token
        device = self._model.device
        with torch.no_grad():  # only the positions that predict a choice token go through the LM head
            hidden = _decoder(model)(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            logp = _head(model)(hidden[row_idx.to(device), pos_idx.to(device)]).float().log_softmax(-1).cpu()
        token_lp = logp.gather(-1, torch.tensor([t[4] for t in targets])[:, None]).squeeze(-1).tolist()
        sums: dict[tuple[int, int], float] = {}
        for (qi, ci, *_), lp in zip(targets, token_lp, strict=True):
            sums[(qi, ci)] = sums.get((qi, ci), 0.0) + lp
        return [Result(req, choice_logprobs={c: sums.get((qi, ci), -math.inf) for ci, c in enumerate(req.choices)},
                       prompt_tokens=prompt_lengths[qi])
                for qi, req in enumerate(batch)]


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
