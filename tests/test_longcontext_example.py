"""The example long-context dataset (`datalake/examples/longcontext.jsonl`) imports and runs end to end: the whole
loop with the LongReward recipe's selection, the tiny model as the policy, the rule-based LongReward judge."""

from __future__ import annotations

import json

import pytest
import yaml

from proxyreward_pl.dataset import import_dataset
from proxyreward_pl.iterate import iterate
from proxyreward_pl.paths import CONFIGS_DIR
from proxyreward_pl.settings import (
    DataSettings,
    EngineSettings,
    EvalSettings,
    JudgeSettings,
    LongRewardSettings,
    RolloutSettings,
    SelectSettings,
    TrainerSettings,
)
from tests.helpers import REPO
from tests.servers.longreward_judge import LongRewardJudgeServer

EXAMPLE = REPO / "datalake" / "examples" / "longcontext.jsonl"


def test_the_example_imports_with_its_contexts(lake):
    counts = import_dataset(EXAMPLE, lake=str(lake.root))
    assert counts["meta_questions"] == 7 and counts["proxy_questions"] > 40
    q = lake.sql("SELECT split, count(*) n, min(length(context)) shortest FROM meta_questions GROUP BY 1 ORDER BY 1")
    assert q.rows() == [("eval", 2, q["shortest"][0]), ("train", 5, q["shortest"][1])]
    assert min(q["shortest"]) > 2000  # every question has a long context


@pytest.mark.slow
def test_the_example_runs_the_whole_loop_with_the_longreward_recipe(lake):
    import_dataset(EXAMPLE, lake=str(lake.root))
    truth = {s["statement"]: s["answer"] for line in EXAMPLE.read_text().splitlines()
             for s in json.loads(line)["proxy_questions"]}
    recipe = yaml.safe_load((CONFIGS_DIR / "longreward.yaml").read_text())
    # the tiny policy's answers state nothing the documents support: helpfulness by length sets them apart
    with LongRewardJudgeServer(truth=truth, ratings={"helpfulness": lambda r: min(10, len(r.split()) // 2)}) as server:
        judge = JudgeSettings(engine="openai", model="longreward-rules", base_url=server.url, api_key_env="PR_TEST_KEY",
                              retry_initial=0.01, retry_max=0.05)
        summary = iterate(
            iterations=1, policy=EngineSettings(engine="hf", model="tiny", max_model_len=512),
            sampling=RolloutSettings(k=3, max_new_tokens=24), judge=judge,
            longreward=LongRewardSettings(**{**recipe["longreward"], "retrieval": "bm25"}),
            selection=SelectSettings(**recipe["selection"]), evaluation=EvalSettings(max_new_tokens=24),
            data=DataSettings(max_length=512, batch_size=4),
            trainer=TrainerSettings(epochs=1, accumulate_grad_batches=1, accelerator="cpu", devices=1,
                                    precision="32-true", loggers=("csv",), progress_bar=False),
            report=False, lake=str(lake.root))
        other = server.asked("other")
    assert summary.height >= 2
    runs = {(r["stage"], r["reward"] or ""): json.loads(r["metrics"])
            for r in lake.sql("SELECT stage, reward, metrics FROM runs WHERE iteration = 1").to_dicts()}
    # every context is longer than the policy's 488-token prompt budget: all cut, and counted
    assert runs[("rollout", "")]["truncated_prompts"] == 5
    assert runs[("train", "")]["truncated_prompts"] == runs[("select", "")]["pairs"] > 0
    cost = runs[("score", "longreward")]
    assert cost["judge_calls_per_response"] > 4 and cost["judge_calls"]["context_parts"] == 5
    scores = lake.sql("SELECT status, count(*) n FROM scores WHERE reward = 'longreward' GROUP BY 1").rows()
    assert scores == [("ok", 15)]
    # every prompt kept: a pair for each question whose answers differ
    differ = lake.sql("SELECT count(*) FROM (SELECT question_id FROM scores WHERE reward = 'longreward' "
                      "GROUP BY 1 HAVING max(score) > min(score))").item()
    assert runs[("select", "")]["pairs"] == differ
    assert other and all("numbered statement" in p for p in other)  # besides LongReward, only the proxy judge
