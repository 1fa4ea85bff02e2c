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


def write_literal(lake, literal: dict) -> None:
    rollouts, scores = [], []
    for q, samples in literal.items():
        for j, (s, n, p) in enumerate(samples):
            rid = f"1:{q}:{j}"
            rollouts.append({"iteration": 1, "rollout_id": rid, "question_id": q, "policy": "p", "sample_index": j,
                             "response": "x", "n_tokens": n, "finish_reason": "stop"})
            scores += [{"iteration": 1, "rollout_id": rid, "question_id": q, "reward": "proxy_accuracy", "score": s,
                        "status": "ok"},
                       {"iteration": 1, "rollout_id": rid, "question_id": q, "reward": "proxy_precision", "score": p,
                        "status": "ok"}]
    if "A" in literal:  # a failed score is ignored, whatever its (missing) value
        rollouts.append({"iteration": 1, "rollout_id": "1:A:3", "question_id": "A", "policy": "p", "sample_index": 3,
                         "response": "x", "n_tokens": 10, "finish_reason": "stop"})
        scores.append({"iteration": 1, "rollout_id": "1:A:3", "question_id": "A", "reward": "proxy_accuracy",
                       "score": None, "status": "failed"})
    lake.write("rollouts", rollouts, iteration=1)
    lake.write("scores", scores, iteration=1)


@pytest.fixture
def scored_lake(lake):
    write_literal(lake, LITERAL)
    return lake


def pairs_of(lake, **settings):
    frame = select_pairs(lake, 1, SelectSettings(**{"conflict_reward": None, **settings}))
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
    a = select_pairs(scored_lake, 1, SelectSettings(random_pairs=True, top_fraction=1.0, seed=1, conflict_reward=None))
    b = select_pairs(scored_lake, 1, SelectSettings(random_pairs=True, top_fraction=1.0, seed=1, conflict_reward=None))
    assert a.equals(b) and a.height == 3
    assert (a["chosen_score"] > a["rejected_score"]).all()


def test_random_baseline_keeps_the_filters(scored_lake):
    """Only the choice differs from select_pairs.sql: the conflict filter and the length guard still apply."""
    for seed in range(8):
        drawn = {r["question_id"]: r for r in select_pairs(scored_lake, 1, SelectSettings(
            random_pairs=True, top_fraction=1.0, seed=seed, conflict_reward=None)).to_dicts()}
        kept = select_pairs(scored_lake, 1, SelectSettings(random_pairs=True, top_fraction=1.0, seed=seed,
                                                           conflict_reward="proxy_precision", max_length_ratio=2.0))
        precision = {f"1:{q}:{j}": p for q, samples in LITERAL.items() for j, (_, _, p) in enumerate(samples)}
        tokens = {f"1:{q}:{j}": n for q, samples in LITERAL.items() for j, (_, n, _) in enumerate(samples)}
        expected = sorted(q for q, r in drawn.items()
                          if precision[r["chosen_rollout_id"]] >= precision[r["rejected_rollout_id"]]
                          and tokens[r["chosen_rollout_id"]] <= 2.0 * tokens[r["rejected_rollout_id"]])
        assert kept["question_id"].to_list() == expected


def test_select_stage_writes_pairs_recomputable_from_scores(scored_lake):
    select(1, SelectSettings(top_fraction=1.0, conflict_reward=None), lake=str(scored_lake.root))
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


def test_the_conflict_filter_is_on_by_default():
    assert SelectSettings().conflict_reward == "proxy_precision"


def test_the_cut_is_taken_among_questions_the_filter_keeps(scored_lake):
    # A has the highest variance but its precision orders its pair the other way: dropped before the cut, so
    # the one question kept is C (after the cut, as before, A would have taken the place and left nothing)
    assert pairs_of(scored_lake, top_k=1, conflict_reward="proxy_precision") == [("C", "1:C:0", "1:C:1", 0.01333)]
    # top half of the two questions that survive (C, E): ceil(1.0) = 1
    assert [p[0] for p in pairs_of(scored_lake, conflict_reward="proxy_precision")] == ["C"]


# question -> [(accuracy, n_tokens, precision)] per sample index: ties the second reward must break
TIES = {
    "F": [(0.8, 50, 0.2), (0.8, 50, 0.9), (0.2, 50, 0.5)],    # best tied: the more precise (F1) is chosen
    "G": [(0.9, 50, 0.5), (0.1, 50, 0.4), (0.1, 50, 0.8)],    # worst tied: the less precise (G1) is rejected
    "H": [(0.7, 50, 0.3), (0.7, 50, 0.3), (0.1, 50, 0.6)],    # no tie helps: a real conflict, dropped
    "J": [(0.6, 50, 0.5), (0.6, 50, 0.5), (0.3, 50, 0.5)],    # all equal: sample index (0 chosen, 2 rejected)
}


def test_ties_are_broken_by_the_second_reward_then_the_sample_index(lake):
    write_literal(lake, TIES)
    got = pairs_of(lake, top_fraction=1.0, conflict_reward="proxy_precision")
    assert [(q, c, r) for q, c, r, _ in got] == [("F", "1:F:1", "1:F:2"), ("G", "1:G:0", "1:G:1"),
                                                ("J", "1:J:0", "1:J:2")]
    # without the second reward, ties fall to the sample index (lowest chosen, highest rejected) and nothing is
    # dropped
    got = pairs_of(lake, top_fraction=1.0)
    assert [(q, c, r) for q, c, r, _ in got] == [("F", "1:F:0", "1:F:2"), ("G", "1:G:0", "1:G:2"),
                                                ("H", "1:H:0", "1:H:2"), ("J", "1:J:0", "1:J:2")]


def test_random_baseline_filters_before_its_cut(scored_lake):
    """The random baseline keeps as many questions as the filters leave, as select_pairs.sql does."""
    for seed in range(6):
        kept = select_pairs(scored_lake, 1, SelectSettings(random_pairs=True, top_k=2, seed=seed))
        survivors = select_pairs(scored_lake, 1, SelectSettings(random_pairs=True, top_fraction=1.0, seed=seed))
        assert kept.height == min(2, survivors.height)
        assert set(kept["question_id"]) <= set(survivors["question_id"])


def test_select_refuses_a_conflict_reward_without_scores(lake):
    write_literal(lake, {"Q": [(0.9, 10, 0.1), (0.1, 10, 0.2)]})
    lake.write("scores", lake.read("scores", 1).filter(lake.read("scores", 1)["reward"] == "proxy_accuracy"),
               iteration=1)
    proc = run_cli("select", "--iteration", "1", lake=lake.root)
    assert proc.returncode == 1 and "conflict_reward 'proxy_precision' has no scores" in proc.stderr
    assert "--selection.conflict_reward null" in proc.stderr
    run_cli("select", "--iteration", "1", "--selection.conflict_reward", "null", lake=lake.root, check=True)
    assert lake.read("pairs", 1)["chosen_rollout_id"].to_list() == ["1:Q:0"]
