"""Offline tiny models: saved with save_pretrained, reloaded through from_pretrained, same ids and logits."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from proxyreward_pl import tiny
from proxyreward_pl.settings import TinySettings
from tests.helpers import run_cli

TEXTS = ["The Calvin cycle takes place in the stroma.", "  Ünïcode ✓ and\ttabs\n\nnew lines 1945-1918",
         "<|im_start|>user\nhi<|im_end|>"]


def test_reload_gives_identical_token_ids(tiny_model_path):
    raw = Tokenizer.from_file(str(tiny_model_path / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(tiny_model_path)
    for text in TEXTS:
        ids = auto(text).input_ids
        assert ids == raw.encode(text).ids
        assert auto.decode(ids) == text
    assert auto.eos_token == "<|im_end|>" and auto.pad_token == "<|endoftext|>"
    assert len(auto) == json.loads((tiny_model_path / "config.json").read_text())["vocab_size"]


def test_chat_template_and_generation(tiny_model_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Explain tides."}], tokenize=False,
                                     add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nExplain tides.<|im_end|>\n<|im_start|>assistant\n"
    batch = tok([prompt, prompt + "The"], return_tensors="pt", padding=True)
    assert batch.input_ids[0, 0] == tok.pad_token_id  # left padding from the constructor
    out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    assert out.shape[1] <= batch.input_ids.shape[1] + 8
    n = sum(p.numel() for p in model.parameters())
    assert 1e6 < n < 2e7


def test_build_is_deterministic_and_reload_keeps_logits(tmp_path):
    cfg = TinySettings(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2,
                               num_heads=2, num_kv_heads=1, warmup_steps=3, warmup_batch_size=2)
    a, b = tiny.build(tmp_path / "a", cfg), tiny.build(tmp_path / "b", cfg)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    ma, mb = AutoModelForCausalLM.from_pretrained(a), AutoModelForCausalLM.from_pretrained(b)
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(ma(ids).logits, mb(ids).logits)


def test_cached_builds_once(tmp_path):
    cfg = TinySettings(vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=1,
                               num_heads=1, num_kv_heads=1, warmup_steps=0)
    path = tiny.cached(cfg, cache_dir=tmp_path)
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert tiny.cached(cfg, cache_dir=tmp_path) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp


def test_cli_builds_a_model(tmp_path):
    out = tmp_path / "cli-model"
    proc = run_cli("tiny-model", str(out), "--tiny.vocab_size", "400", "--tiny.hidden_size", "64",
                   "--tiny.num_layers", "1", "--tiny.warmup_steps", "0", check=True)
    assert "parameters" in proc.stdout
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 1


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"])
def test_saved_files(tiny_model_path, name):
    assert (tiny_model_path / name).exists()


def test_warm_up_and_tokenizer_corpus_hold_no_eval_text():
    """Evaluation measures what the loop taught: the tiny model never trains on an eval question or statement."""
    from proxyreward_pl.dataset import seed_records

    records = seed_records()
    eval_text = {r.text for r in records if r.split == "eval"} | {s for r in records if r.split == "eval"
                                                                   for s, _ in r.statements}
    train_text = {r.text for r in records if r.split == "train"}
    assert eval_text and train_text
    corpus = set(tiny.corpus_texts())
    warm = [m["content"] for d in tiny.warmup_dialogues() for m in d]
    assert not eval_text & corpus
    assert not [e for e in eval_text for w in warm if e in w]
    assert train_text <= corpus and train_text <= set(warm)
