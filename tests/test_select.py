"""select_pairs.sql on literal score rows: the exact pairs."""

from __future__ import annotations

import pytest

from proxyreward_pl.select import select, select_pairs
from proxyreward_pl.settings import SelectSettings
from tests.helpers import run_cli

# question -> [(score, n_tokens, precision)] per sample index
LITERAL = {
    "A": [(0.9, 300, 0.5), (0.1, 100, 0.8), (0.5, 120, 0.5)],  # variance 0.16
    "B": [(0.5, 50, 0.5), (0.5, 60, 0.5)],                    # no spread: never a pair
    "C": [(0.6, 80, 0.9), (0.4, 80, 0.1), (0.6, 90, 0.7)],     # variance 0.01333; tie at the top -> sample 0
    "D": [(0.3, 70, 0.3)],                                    # one answer: never a pair
    "E": [(0.2, 60, 0.2), (0.3, 60, 0.3), (0.2, 60, 0.2)],     # variance 0.00333; tie at the bottom -> sample 2
}


@pytest.fixture
def scored_lake(lake):
    rollouts, scores = [], []
    for q, samples in LITERAL.items():
        for j, (s, n, p) in enumerate(samples):
            rid = f"1:{q}:{j}"
            rollouts.append({"iteration": 1, "rollout_id": rid, "question_id": q, "policy": "p", "sample_index": j,
                             "response": "x", "n_tokens": n, "finish_reason": "stop"})
            scores += [{"iteration": 1, "rollout_id": rid, "question_id": q, "reward": "proxy_accuracy", "score": s,
                        "status": "ok"},
                       {"iteration": 1, "rollout_id": rid, "question_id": q, "reward": "proxy_precision", "score": p,
                        "status": "ok"}]
    # a failed score is ignored, whatever its (missing) value
    rollouts.append({"iteration": 1, "rollout_id": "1:A:3", "question_id": "A", "policy": "p", "sample_index": 3,
                     "response": "x", "n_tokens": 10, "finish_reason": "stop"})
    scores.append({"iteration": 1, "rollout_id": "1:A:3", "question_id": "A", "reward": "proxy_accuracy",
                   "score": None, "status": "failed"})
    lake.write("rollouts", rollouts, iteration=1)
    lake.write("scores", scores, iteration=1)
    return lake


def pairs_of(lake, **settings):
    frame = select_pairs(lake, 1, SelectSettings(**settings))
    return [(r["question_id"], r["chosen_rollout_id"], r["rejected_rollout_id"], round(r["score_variance"], 5))
            for r in frame.to_dicts()]


def test_top_half_by_variance(scored_lake):
    # eligible A, C, E; top 50 % of 3 = ceil(1.5) = 2: A and C
    assert pairs_of(scored_lake) == [("A", "1:A:0", "1:A:1", 0.16), ("C", "1:C:0", "1:C:1", 0.01333)]


def test_all_eligible_and_ties(scored_lake):
    assert pairs_of(scored_lake, top_fraction=1.0) == [
        ("A", "1:A:0", "1:A:1", 0.16), ("C", "1:C:0", "1:C:1", 0.01333), ("E", "1:E:1", "1:E:2", 0.00333)]


def test_min_gap_and_top_k(scored_lake):
    assert [p[0] for p in pairs_of(scored_lake, top_fraction=1.0, min_gap=0.15)] == ["A", "C"]
    assert [p[0] for p in pairs_of(scored_lake, top_k=1)] == ["A"]


def test_conflict_filter_drops_pairs_a_second_reward_orders_the_other_way(scored_lake):
    # A: precision 0.5 (chosen) < 0.8 (rejected) -> dropped; C: 0.9 > 0.1 kept; E: 0.3 > 0.2 kept
    got = pairs_of(scored_lake, top_fraction=1.0, conflict_reward="proxy_precision")
    assert [p[0] for p in got] == ["C", "E"]


def test_length_guard(scored_lake):
    # A's chosen answer is 3x its rejected one
    assert [p[0] for p in pairs_of(scored_lake, top_fraction=1.0, max_length_ratio=2.0)] == ["C", "E"]


def test_random_baseline_is_seeded_and_well_ordered(scored_lake):
    a = select_pairs(scored_lake, 1, SelectSettings(random_pairs=True, top_fraction=1.0, seed=1))
    b = select_pairs(scored_lake, 1, SelectSettings(random_pairs=True, top_fraction=1.0, seed=1))
    assert a.equals(b) and a.height == 3
    assert (a["chosen_score"] > a["rejected_score"]).all()


def test_random_baseline_keeps_the_filters(scored_lake):
    """Only the choice differs from select_pairs.sql: the conflict filter and the length guard still apply."""
    for seed in range(8):
        drawn = {r["question_id"]: r for r in select_pairs(scored_lake, 1, SelectSettings(
            random_pairs=True, top_fraction=1.0, seed=seed)).to_dicts()}
        kept = select_pairs(scored_lake, 1, SelectSettings(random_pairs=True, top_fraction=1.0, seed=seed,
                                                           conflict_reward="proxy_precision", max_length_ratio=2.0))
        precision = {f"1:{q}:{j}": p for q, samples in LITERAL.items() for j, (_, _, p) in enumerate(samples)}
        tokens = {f"1:{q}:{j}": n for q, samples in LITERAL.items() for j, (_, n, _) in enumerate(samples)}
        expected = sorted(q for q, r in drawn.items()
                          if precision[r["chosen_rollout_id"]] >= precision[r["rejected_rollout_id"]]
                          and tokens[r["chosen_rollout_id"]] <= 2.0 * tokens[r["rejected_rollout_id"]])
        assert kept["question_id"].to_list() == expected


def test_select_stage_writes_pairs_recomputable_from_scores(scored_lake):
    select(1, SelectSettings(top_fraction=1.0), lake=str(scored_lake.root))
    pairs = scored_lake.read("pairs", 1)
    assert pairs.height == 3 and (pairs["chosen_score"] > pairs["rejected_score"]).all()
    check = scored_lake.sql("""
        SELECT p.question_id, p.score_variance, v.variance FROM pairs p
        JOIN (SELECT question_id, var_samp(score) variance FROM scores
              WHERE reward = 'proxy_accuracy' AND status = 'ok' GROUP BY 1) v USING (question_id)""")
    assert all(abs(a - b) < 1e-12 for a, b in zip(check["score_variance"], check["variance"], strict=True))
    runs = scored_lake.sql("SELECT status, metrics FROM runs WHERE stage = 'select'").row(0)
    assert runs[0] == "finished" and '"pairs": 3' in runs[1]


def test_select_refuses_a_reward_without_scores(scored_lake):
    proc = run_cli("select", "--iteration", "1", "--selection.reward", "llm_judge", lake=scored_lake.root)
    assert proc.returncode == 1 and "no 'llm_judge' scores" in proc.stderr and "proxy_accuracy" in proc.stderr
