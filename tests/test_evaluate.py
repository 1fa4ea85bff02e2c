"""`proxyreward evaluate` with an evaluation judge other than the training judge: both judges' scores of the same
answers, in their own rows, and in the summary, the health check and the report."""

from __future__ import annotations

import json

import pytest

from proxyreward_pl.evaluate import evaluate
from proxyreward_pl.iterate import health, summary
from proxyreward_pl.settings import EngineSettings, EvalSettings, JudgeSettings
from tests.helpers import run_cli, truth
from tests.servers.judge import JudgeServer


def http_judge(url: str, model: str) -> JudgeSettings:
    return JudgeSettings(engine="openai", model=model, base_url=url, api_key_env="PR_TEST_KEY", timeout=5.0,
                         retry_initial=0.01, retry_max=0.05)


def test_an_evaluation_judge_lands_in_its_own_rows(seeded_lake, tiny_model_path):
    facts = truth()
    policy = EngineSettings(engine="hf", model=str(tiny_model_path))
    # the training judge answers from the truth, the evaluation judge from its negation: they disagree everywhere
    with JudgeServer(truth=facts) as trainer, JudgeServer(truth={s: not a for s, a in facts.items()}) as stronger:
        metrics = evaluate(0, policy, http_judge(trainer.url, "trainer"),
                           EvalSettings(max_new_tokens=6, judge=http_judge(stronger.url, "stronger")),
                           lake=str(seeded_lake.root))
        asked = len(trainer.log), len(stronger.log)
    assert asked == (16, 16), "each judge reads every eval answer once"
    rows = seeded_lake.read("evaluations", 0)
    by = {(r["reward"], r["judge"]) for r in rows.to_dicts()}
    assert by == {("proxy_accuracy", "openai:stronger|generate"), ("proxy_precision", "openai:stronger|generate"),
                  ("proxy_weighted_accuracy", "openai:stronger|generate"),
                  ("training_judge_proxy_accuracy", "openai:trainer|generate"),
                  ("training_judge_proxy_precision", "openai:trainer|generate"),
                  ("training_judge_proxy_weighted_accuracy", "openai:trainer|generate")}
    assert rows.height == 16 * 6
    mean = {r: rows.filter(rows["reward"] == r)["score"].mean() for r in rows["reward"].unique()}
    assert mean["proxy_accuracy"] == 0.0 and mean["training_judge_proxy_accuracy"] == 1.0
    assert metrics["judge"] == "openai:stronger|generate" and metrics["training_judge"] == "openai:trainer|generate"
    row = summary(seeded_lake).to_dicts()[0]
    assert row["eval_accuracy"] == 0.0 and row["training_judge_accuracy"] == 1.0
    assert health(seeded_lake).to_dicts()[0]["judge_gap"] == 1.0
    run = json.loads(seeded_lake.sql("SELECT config FROM runs WHERE stage = 'evaluate'").item())
    assert run["evaluation"]["judge"]["model"] == "stronger"


def test_the_same_judge_twice_is_asked_once(seeded_lake, tiny_model_path):
    policy = EngineSettings(engine="hf", model=str(tiny_model_path))
    with JudgeServer(truth=truth()) as server:
        same = http_judge(server.url, "judge")
        evaluate(0, policy, same, EvalSettings(max_new_tokens=6, judge=same), lake=str(seeded_lake.root))
        assert len(server.log) == 16
    rewards = set(seeded_lake.read("evaluations", 0)["reward"])
    assert rewards == {"proxy_accuracy", "proxy_precision", "proxy_weighted_accuracy"}


@pytest.mark.parametrize("flag, field", [("--evaluation.judge.max_tokens", "--evaluation.judge.max_tokens"),
                                         ("--evaluation.judge.batch_size", "--evaluation.judge.batch_size")])
def test_a_bad_evaluation_judge_setting_names_its_field(seeded_lake, flag, field):
    proc = run_cli("evaluate", "--iteration", "0", flag, "0", lake=seeded_lake.root)
    assert proc.returncode == 1 and f"{field}: must be >= 1, got 0" in proc.stderr, proc.stderr
