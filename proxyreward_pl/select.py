"""`proxyreward select --iteration N`: DPO pairs from the iteration's scores, chosen in SQL.

The query is `datalake/sql/select_pairs.sql` (variance selection; `select_random_pairs.sql` for the random
baseline): per meta-question n, mean, sample variance and max - min of the chosen reward; chosen = highest
score, rejected = lowest, ties broken by the conflict reward, then by sample index; questions with n >= 2 and
a gap of at least `min_gap` (and above 0) whose pair survives the conflict filter (on by default:
proxy_precision must not order the pair the other way) and the length guard are ranked by variance, and the
top `top_fraction` (or `top_k`) of them kept. The result replaces the iteration's `pairs` partition.
"""

from __future__ import annotations

import dataclasses

import polars as pl

from .console import say
from .errors import ProxyRewardError
from .lake import Lake
from .lake.lineage import sql_identity
from .lake.runs import record_run
from .settings import SelectSettings


def select_pairs(lake: Lake, iteration: int, settings: SelectSettings):
    """The pairs the selection SQL picks, as a polars frame (nothing written)."""
    params = {"iteration": iteration, "reward": settings.reward, "min_gap": settings.min_gap,
              "top_fraction": settings.top_fraction, "top_k": settings.top_k}
    params.update(conflict_reward=settings.conflict_reward, max_length_ratio=settings.max_length_ratio)
    name = "select_random_pairs" if settings.random_pairs else "select_pairs"
    if settings.random_pairs:
        params["seed"] = settings.seed
    return lake.run_sql_file(name, params).with_columns(sql_hash=pl.lit(sql_identity(name)))


def select(iteration: int, selection: SelectSettings = SelectSettings(), force: bool = False,
           lake: str | None = None) -> dict:
    """Choose the iteration's DPO pairs from its scores and write them to `pairs`.

    Args:
        iteration: whose scores to select from.
        selection: reward, min_gap, top_fraction/top_k, conflict_reward, max_length_ratio, random_pairs.
        force: select even from stale scores (see `proxyreward lake lineage`).
        lake: lake root (default: PROXYREWARD_LAKE or the repository's datalake/).
    """
    lk = Lake(lake)
    available = lk.sql("SELECT DISTINCT reward FROM scores WHERE iteration = ?", [iteration])["reward"].to_list()
    if selection.reward not in available:
        raise ProxyRewardError(f"iteration {iteration} has no {selection.reward!r} scores (it has: "
                               f"{', '.join(sorted(available)) or 'none'}); run `proxyreward score` first")
    if selection.conflict_reward and selection.conflict_reward not in available:
        raise ProxyRewardError(f"conflict_reward {selection.conflict_reward!r} has no scores in iteration {iteration} "
                               f"(it has: {', '.join(sorted(available))}); score it first, or turn the conflict "
                               "filter off with --selection.conflict_reward null")
    with record_run(lk, iteration, "select", dataclasses.asdict(selection), force=force) as metrics:
        pairs = select_pairs(lk, iteration, selection)
        if pairs.is_empty():
            raise ProxyRewardError(f"iteration {iteration}: no meta-question has answers that differ in "
                                   f"{selection.reward}; nothing to train on")
        lk.write("pairs", pairs, iteration=iteration)
        questions = lk.sql("SELECT count(DISTINCT question_id) FROM scores WHERE iteration = ? AND reward = ?",
                           [iteration, selection.reward]).item()
        metrics.update(pairs=pairs.height, questions=questions,
                       mean_margin=float((pairs["chosen_score"] - pairs["rejected_score"]).mean()),
                       min_variance=float(pairs["score_variance"].min()))
    say(f"iteration {iteration}: {pairs.height} pairs from {questions} questions "
          f"(mean margin {metrics['mean_margin']:.3f})")
    return dict(metrics)
