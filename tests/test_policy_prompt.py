"""The policy's prompt (`prompts/policy.j2`): the question alone, or its context then the question, cut to fit;
read back from the requests a real policy server received, and from the pairs the training core reads."""

from __future__ import annotations

import json

from proxyreward_pl import policy_prompt
from proxyreward_pl.dataset import Record, seed_records, store
from proxyreward_pl.rollout import rollout
from proxyreward_pl.settings import DataSettings, EngineSettings, RolloutSettings
from tests.servers.longreward_judge import LongRewardJudgeServer

CONTEXT = "The Pelican carried salt from Varrow to Isk. She was lost in a gale in 1836."
LONG = " ".join(f"Sentence {i} of a long report on the harbour and its trade." for i in range(400))


def test_without_a_context_the_prompt_is_exactly_the_question():
    for text in ["  Explain tides.\n", *(r.text for r in seed_records()[:20])]:
        assert policy_prompt.render(text, None) == text
        assert policy_prompt.render(text, "") == text


def test_a_long_context_is_cut_in_its_middle_to_fit_the_budget(tiny_model_path):
    tokens = policy_prompt.counter(str(tiny_model_path))
    whole, cut = policy_prompt.fit("Which goods?", CONTEXT, 400, tokens)
    assert not cut and CONTEXT in whole and whole.endswith("Question: Which goods?")
    prompt, cut = policy_prompt.fit("Which goods did the harbour trade?", LONG, 400, tokens)
    assert cut and tokens.count(prompt) <= 400 and tokens.count(prompt) > 380  # as much context as fits
    assert prompt.startswith("Sentence 0 of a long report") and policy_prompt.CUT in prompt
    assert "Sentence 399 of a long report" in prompt and prompt.endswith("Question: Which goods did the harbour trade?")


def test_rollout_puts_the_context_in_the_policys_prompt(lake):
    store(lake, [Record("bare", "Explain tides.", "science", "train", "test"),
                 Record("ctx", "What did the Pelican carry?", "history", "train", "test", CONTEXT),
                 Record("long", "What did the harbour trade?", "history", "train", "test", LONG)], "test")
    with LongRewardJudgeServer() as server:
        policy = EngineSettings(engine="openai", model="policy", base_url=server.url, api_key_env="PR_TEST_KEY",
                                max_model_len=600, retry_initial=0.01, retry_max=0.05)
        metrics = rollout(1, policy, RolloutSettings(k=1, max_new_tokens=100), lake=str(lake.root))
        asked = server.asked("other")
    assert len(asked) == 3 and "Explain tides." in asked  # the bare question, exactly
    ctx = next(p for p in asked if "What did the Pelican carry?" in p)
    assert ctx.startswith(CONTEXT) and ctx.endswith("Question: What did the Pelican carry?")
    long = next(p for p in asked if "What did the harbour trade?" in p)
    # no tokenizer for a served model known only by name: cut to 500 tokens at 3 characters each
    assert policy_prompt.CUT in long and len(long) <= 3 * (600 - 100)
    assert metrics["truncated_prompts"] == 1
    run = json.loads(lake.sql("SELECT metrics FROM runs WHERE stage = 'rollout'").item())
    assert run["truncated_prompts"] == 1


def test_training_pairs_get_the_same_prompt_cut_to_the_prompt_budget(tiny_model_path):
    rows = [{"prompt": "Explain tides.", "context": None}, {"prompt": "Which goods?", "context": CONTEXT},
            {"prompt": "What did the harbour trade?", "context": LONG}]
    cut = policy_prompt.training_prompts(rows, str(tiny_model_path), DataSettings(max_length=512))
    assert cut == 1 and all("context" not in r for r in rows)
    assert rows[0]["prompt"] == "Explain tides." and rows[1]["prompt"] == policy_prompt.render("Which goods?", CONTEXT)
    assert policy_prompt.counter(str(tiny_model_path)).count(rows[2]["prompt"]) <= 256  # max_length // 2
