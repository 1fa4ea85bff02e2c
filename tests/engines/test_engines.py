"""Engines on the tiny model: continuation scores equal a naive forward, sampling, the cache, vLLM on CPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from proxyreward_pl.engines import Request, make_engine
from proxyreward_pl.settings import EngineSettings
from tests.helpers import REPO, add_rollouts, run_cli

MESSAGES = [{"role": "user", "content": "Is the Moon made of rock? Answer True or False."}]


def naive_choice_logprob(path, messages, choice) -> float:
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    p = tok(prompt, add_special_tokens=False).input_ids
    full = tok(prompt + choice, add_special_tokens=False).input_ids
    with torch.no_grad():
        logp = model(torch.tensor([full])).logits[0].log_softmax(-1)
    return float(sum(logp[i - 1, full[i]] for i in range(len(p), len(full))))


def test_hf_choice_scores_equal_a_naive_forward(tiny_model_path):
    engine = make_engine(EngineSettings(engine="hf", model=str(tiny_model_path), batch_size=4))
    choices = ("True", "False", "10", "unknown answer")  # single- and multi-token continuations
    got = []
    engine.run([Request(MESSAGES, choices=choices), Request(MESSAGES[:1] * 1, choices=("7",))], got.append)
    scores = got[0].choice_logprobs
    for c in choices:
        assert scores[c] == pytest.approx(naive_choice_logprob(tiny_model_path, MESSAGES, c), abs=1e-4), c


def test_prefix_groups_on_literal_sequences():
    from proxyreward_pl.engines.prefix import prefix_groups

    a = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    seqs = [a + [10], [7, 7], a + [11, 12], a[:4] + [0, 0, 0, 0, 0, 0], a + [13]]
    groups = prefix_groups(seqs)
    # the three that share 9 tokens form one group; the one sharing 4 of 10 (< half) and the stranger stand alone
    assert sorted((p, sorted(m)) for p, m in groups) == [(2, [1]), (9, [0, 2, 4]), (10, [3])]
    # a limit keeps the tokens a member must compute itself (its last prompt token) out of the shared prefix
    groups = prefix_groups(seqs, limits=[len(s) - 1 for s in seqs])
    assert (9, [0, 2, 4]) in [(p, sorted(m)) for p, m in groups]
    groups = prefix_groups([a + [10], a + [11]], limits=[5, 9])
    assert groups == [(5, [0, 1])]


def judge_requests(n_responses: int = 3, n_statements: int = 5) -> list[Request]:
    from proxyreward_pl import prompts
    from proxyreward_pl.dataset import seed_records

    out = []
    for j, r in enumerate([r for r in seed_records() if r.split == "train"][:n_responses]):
        response = " ".join(s for s, a in r.statements if a)[: 150 * (j + 1)]
        for statement, _ in r.statements[:n_statements]:
            text = prompts.render("proxy_judge", question=r.text, response=response, statements=[statement],
                                  answer_format="single")
            out.append(Request([{"role": "user", "content": text}], max_tokens=1, choices=("True", "False", "Unknown")))
    return out


def test_hf_shared_prefix_gives_the_numbers_of_whole_prompts(tiny_model_path):
    """The statements of a response share their prompt up to the statement: computed once, its KV cache reused by
    every statement, the log-probs equal those of each prompt read whole (and of a naive forward)."""
    requests = judge_requests() + [Request(MESSAGES, choices=("True", "unknown answer", "10"))]
    results = {}
    for sharing in (False, True):
        engine = make_engine(EngineSettings(engine="hf", model=str(tiny_model_path), batch_size=8,
                                            prefix_sharing=sharing))
        got = []
        engine.run(requests, got.append)
        results[sharing] = {id(r.request): r for r in got}
    for req in requests:
        whole, shared = results[False][id(req)], results[True][id(req)]
        assert whole.ok and shared.ok and whole.prompt_tokens == shared.prompt_tokens
        for c in req.choices:
            assert shared.choice_logprobs[c] == pytest.approx(whole.choice_logprobs[c], abs=1e-4), c
    for req in (requests[0], requests[-1]):
        for c in req.choices:
            assert results[True][id(req)].choice_logprobs[c] == pytest.approx(
                naive_choice_logprob(tiny_model_path, req.messages, c), abs=1e-4)
    # three responses of five statements: each group pays its prefix once and serves it four times from the cache
    assert sum(r.cached_prompt_tokens for r in results[False].values()) == 0
    cached = [r.cached_prompt_tokens for r in results[True].values()]
    assert sum(c > 0 for c in cached) == 3 * 4
    prompt = sum(r.prompt_tokens for r in results[True].values())
    assert sum(cached) > 0.6 * prompt, "most of the prompt tokens come from the shared prefixes"


def test_hf_sampling_and_the_cache(tiny_model_path, tmp_path):
    settings = EngineSettings(engine="hf", model=str(tiny_model_path))
    engine = make_engine(settings, cache_path=tmp_path / "cache.sqlite")
    req = Request(MESSAGES, max_tokens=12, temperature=0.8, n=3, seed=1)
    first = []
    engine.run([req], first.append)
    r = first[0]
    assert len(r.texts) == 3 and all(n <= 12 for n in r.completion_tokens)
    assert set(r.finish_reasons) <= {"stop", "length"} and not r.cached
    again = make_engine(settings, cache_path=tmp_path / "cache.sqlite")  # a new process would see the same
    second = []
    again.run([req], second.append)
    assert second[0].cached and second[0].texts == r.texts and again.sent == 0


def test_hf_engine_generates_with_an_adapter(tiny_model_path, tmp_path):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_path),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(tmp_path / "adapter")
    engine = make_engine(EngineSettings(engine="hf", model=str(tiny_model_path)))
    out = []
    engine.run([Request(MESSAGES, choices=("True",)), Request(MESSAGES, choices=("True",),
                                                              adapter=str(tmp_path / "adapter"))], out.append)
    base, tuned = (r.choice_logprobs["True"] for r in out)
    assert base == pytest.approx(naive_choice_logprob(tiny_model_path, MESSAGES, "True"), abs=1e-4)
    assert tuned != pytest.approx(base, abs=1e-3)


def test_hf_generate_mode_of_a_tiny_model_fails_visibly(seeded_lake):
    """Free text from a 3M-parameter judge does not parse: rollouts are recorded failed, never scored 0."""
    add_rollouts(seeded_lake, 1, n_questions=1, k=2)
    run_cli("score", "--iteration", "1", "--judge.engine", "hf", "--judge.model", "tiny", "--judge.mode",
            "generate", "--judge.max_tokens", "24", "--judge.parse_retries", "0", lake=seeded_lake.root, check=True)
    scores = seeded_lake.read("scores", 1)
    assert (scores["status"] == "failed").all() and scores["detail"].str.contains("unusable answer").all()


def test_hf_logprob_judge_through_the_cli(seeded_lake):
    add_rollouts(seeded_lake, 1, n_questions=2, k=2)
    out = run_cli("score", "--iteration", "1", "--config", "configs/tiny.yaml", "--judge.engine", "hf",
                  "--judge.mode", "logprob", lake=seeded_lake.root, check=True)
    assert "proxy_accuracy mean" in out.stdout
    scores = seeded_lake.read("scores", 1)
    assert (scores["status"] == "ok").all() and scores["score"].is_between(0, 1).all()
    metrics = json.loads(seeded_lake.sql("SELECT metrics FROM runs").item())
    assert metrics["prompt_tokens"] > 0 and metrics["sent"] == metrics["requests"]


vllm = pytest.importorskip("vllm", reason="vllm(-cpu) not installed")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nproc") is None, reason="needs a POSIX machine")
def test_vllm_cpu_judge_in_both_modes(seeded_lake):
    """vLLM in-process on the tiny model: regex-constrained generate mode and logprob mode give valid answers."""
    add_rollouts(seeded_lake, 1, n_questions=1, k=2)
    code = (
        "from proxyreward_pl.score import score\n"
        "from proxyreward_pl.settings import JudgeSettings\n"
        "import sys\n"
        "if __name__ == '__main__':\n"
        "    for mode in ('generate', 'logprob'):\n"
        "        score(1, 'proxy', JudgeSettings(engine='vllm', model='tiny', mode=mode, max_tokens=200,\n"
        "              max_model_len=2048), lake=sys.argv[1])\n"
        "        print('MODE', mode, flush=True)\n"
    )
    script = seeded_lake.root / "vllm_judge.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script), str(seeded_lake.root)], cwd=REPO, capture_output=True,
                          text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MODE generate" in proc.stdout and "MODE logprob" in proc.stdout
    judgments = seeded_lake.read("judgments", 1)
    generate = judgments.filter(judgments["judge"].str.ends_with("|generate"))
    logprob = judgments.filter(judgments["judge"].str.ends_with("|logprob"))
    assert generate.height == logprob.height > 0
    assert (generate["status"] != "failed").all()  # the regex forces a parsable answer
    assert (logprob["status"] != "failed").all()


@pytest.mark.slow
def test_vllm_next_token_scores_equal_hf_with_the_prefix_cache_on(tiny_model_path, tmp_path):
    """vLLM reads next-token log-probs of the choice tokens (a two-token choice: a second request), with its prefix
    cache on and LoRA enabled (prompt log-probs crash vllm-cpu there): the same numbers as HF, most of each
    prompt served from the cache."""
    requests = judge_requests()
    hf = make_engine(EngineSettings(engine="hf", model=str(tiny_model_path)))
    expected = []
    hf.run(requests, expected.append)
    (tmp_path / "expected.json").write_text(json.dumps(
        [[r.request.messages, r.request.choices, r.choice_logprobs] for r in expected]))
    code = (
        "import json, sys\n"
        "from proxyreward_pl.engines import Request, make_engine\n"
        "from proxyreward_pl.settings import EngineSettings\n"
        "if __name__ == '__main__':\n"
        "    rows = json.load(open(sys.argv[2]))\n"
        "    engine = make_engine(EngineSettings(engine='vllm', model=sys.argv[1], gpu_memory_utilization=0.1,\n"
        "                                        max_model_len=2048, enable_lora=True, block_size=32))\n"
        "    got = []\n"
        "    engine.run([Request(m, max_tokens=1, choices=tuple(c)) for m, c, _ in rows], got.append)\n"
        "    engine.release()\n"
        "    out = {json.dumps(r.request.messages): [r.choice_logprobs, r.prompt_tokens, r.cached_prompt_tokens]\n"
        "           for r in got}\n"
        "    print('RESULT', json.dumps([out[json.dumps(m)] for m, _, _ in rows]), flush=True)\n"
    )
    script = tmp_path / "vllm_scores.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script), str(tiny_model_path), str(tmp_path / "expected.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(REPO)})  # this checkout's package
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))[7:])
    for (lp, prompt, _), want in zip(got, expected, strict=True):
        assert prompt == want.prompt_tokens
        for c in want.request.choices:
            assert lp[c] == pytest.approx(want.choice_logprobs[c], abs=1e-3), c
    assert sum(c for _, _, c in got) > 0.5 * sum(p for _, p, _ in got)


def test_cache_key_follows_the_adapter_weights_not_its_path():
    a = Request(MESSAGES, adapter="/lake/adapters/iteration=1", adapter_version="policy+adapter:aaa")
    b = Request(MESSAGES, adapter="/lake/adapters/iteration=1", adapter_version="policy+adapter:bbb")
    assert a.key("hf:m") != b.key("hf:m")
    assert a.key("hf:m") == Request(MESSAGES, adapter=a.adapter, adapter_version=a.adapter_version).key("hf:m")


def test_a_retrained_adapter_at_the_same_path_is_loaded_afresh(tiny_model_path, tmp_path):
    """An engine that outlives a training run (shared across stages) must not answer from the old weights."""
    from peft import LoraConfig, get_peft_model

    path = tmp_path / "adapter"

    def save(seed: int) -> None:
        torch.manual_seed(seed)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_path),
                               LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        model.save_pretrained(path)

    def true_logprob(engine, version: str) -> float:
        out = []
        engine.run([Request(MESSAGES, choices=("True",), adapter=str(path), adapter_version=version)], out.append)
        return out[0].choice_logprobs["True"]

    engine = make_engine(EngineSettings(engine="hf", model=str(tiny_model_path)))
    save(1)
    first = true_logprob(engine, "v1")
    save(2)
    second = true_logprob(engine, "v2")
    fresh = true_logprob(make_engine(EngineSettings(engine="hf", model=str(tiny_model_path))), "v2")
    assert second != pytest.approx(first, abs=1e-4) and second == pytest.approx(fresh, abs=1e-5)


def test_a_shared_engine_caches_into_the_lake_it_is_asked_for(tiny_model_path, tmp_path):
    from proxyreward_pl.engines import EngineCache, shared_engines

    settings = EngineSettings(engine="hf", model=str(tiny_model_path))
    req = Request(MESSAGES, choices=("True", "False"))
    with shared_engines():
        a = make_engine(settings, cache_path=tmp_path / "a" / "engine.sqlite")
        a.run([req], lambda r: None)
        b = make_engine(settings, cache_path=tmp_path / "b" / "engine.sqlite")
        assert b is a, "one model per settings, whatever the lake"
        b.run([req], lambda r: None)
        assert a.sent == 2, "lake b's cache was empty: asked again, not served from lake a's"
    for lake in ("a", "b"):
        cache = EngineCache(tmp_path / lake / "engine.sqlite")
        assert cache.get(req.key(a.identity)) is not None
        cache.close()
