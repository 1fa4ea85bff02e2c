"""The paper's Table 5 (each reward's mean and variance per iteration) on literal score rows, and in the report."""

from __future__ import annotations

import pytest

from proxyreward_pl.report import write_report

# (iteration, question, rollout) -> {reward: score}
SCORES = {
    (1, "A", 0): {"proxy_accuracy": 0.2, "proxy_precision": 0.5},
    (1, "A", 1): {"proxy_accuracy": 0.6, "proxy_precision": 0.5},
    (1, "B", 0): {"proxy_accuracy": 0.4, "proxy_precision": 1.0},
    (1, "B", 1): {"proxy_accuracy": 0.4, "proxy_precision": 0.0},
    (2, "A", 0): {"proxy_accuracy": 1.0, "proxy_precision": 1.0},
    (2, "A", 1): {"proxy_accuracy": 0.0, "proxy_precision": None},  # a failed score is left out
}


@pytest.fixture
def table5_lake(lake):
    rows = []
    for (it, q, j), by_reward in SCORES.items():
        for reward, score in by_reward.items():
            rows.append({"iteration": it, "rollout_id": f"{it}:{q}:{j}", "question_id": q, "reward": reward,
                         "score": score, "status": "ok" if score is not None else "failed"})
    for it in (1, 2):
        lake.write("scores", [r for r in rows if r["iteration"] == it], iteration=it)
    return lake


def test_table5_mean_and_variance_of_each_reward(table5_lake):
    got = {(r["iteration"], r["reward"]): r for r in table5_lake.run_sql_file("analysis/variance_by_iteration")
           .to_dicts()}
    assert set(got) == {(1, "proxy_accuracy"), (1, "proxy_precision"), (2, "proxy_accuracy"), (2, "proxy_precision")}
    a1 = got[(1, "proxy_accuracy")]  # 0.2 0.6 0.4 0.4: mean 0.4, variance 0.08 / 3; within A 0.08, within B 0
    assert a1["rollouts"] == 4 and a1["mean"] == pytest.approx(0.4)
    assert a1["variance"] == pytest.approx(0.08 / 3, abs=1e-5)
    assert a1["mean_variance"] == pytest.approx(0.04) and a1["questions_without_spread"] == 1
    p1 = got[(1, "proxy_precision")]  # 0.5 0.5 1 0: mean 0.5, within A 0, within B 0.5
    assert p1["mean"] == pytest.approx(0.5) and p1["mean_variance"] == pytest.approx(0.25)
    assert p1["mean_gap"] == pytest.approx(0.5)
    p2 = got[(2, "proxy_precision")]  # one usable score: no within-question variance
    assert p2["rollouts"] == 1 and p2["mean_variance"] is None


def test_the_report_shows_table5(table5_lake, tmp_path):
    page = write_report(table5_lake, tmp_path).read_text()
    assert "Table 5" in page and "proxy_precision" in page and "mean_variance" in page
