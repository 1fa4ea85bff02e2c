"""Literal rows for stage tests: rollouts and pairs written straight into a lake."""

from __future__ import annotations

from proxyreward_pl.dataset import seed_records
from proxyreward_pl.lake import Lake


def train_records(n: int):
    return [r for r in seed_records() if r.split == "train"][:n]


def truth() -> dict[str, bool]:
    return {s: a for r in seed_records() for s, a in r.statements}


def add_rollouts(lake: Lake, iteration: int, n_questions: int = 8, k: int = 2) -> list[dict]:
    """k rollouts per train question: sample 0 states the true facts, sample 1 the false ones, the rest
    a few facts each."""
    rows = []
    for r in train_records(n_questions):
        true = " ".join(s for s, a in r.statements if a)
        false = " ".join(s for s, a in r.statements if not a)
        for j in range(k):
            text = true if j == 0 else false if j == 1 else " ".join(s for s, _ in r.statements[j:j + 3])
            rows.append({"iteration": iteration, "rollout_id": f"{iteration}:{r.question_id}:{j}",
                         "question_id": r.question_id, "policy": "test", "sample_index": j, "response": text,
                         "n_tokens": len(text.split()), "finish_reason": "stop"})
    lake.write("rollouts", rows, iteration=iteration)
    return rows


def add_pairs(lake: Lake, iteration: int, n_questions: int = 8) -> None:
    """Two rollouts per train question (true facts vs false ones) and the pair between them."""
    add_rollouts(lake, iteration, n_questions, k=2)
    pairs = [{"iteration": iteration, "question_id": r.question_id,
              "chosen_rollout_id": f"{iteration}:{r.question_id}:0",
              "rejected_rollout_id": f"{iteration}:{r.question_id}:1",
              "chosen_score": 0.9, "rejected_score": 0.2, "score_variance": 0.1}
             for r in train_records(n_questions)]
    lake.write("pairs", pairs, iteration=iteration)
