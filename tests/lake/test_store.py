"""The lake: contract validation, atomic and idempotent writes, crash safety, views."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime

import polars as pl
import pyarrow.parquet as pq
import pytest

from proxyreward_pl.lake import Lake, LakeError, ValidationError, contract


def scores(iteration: int, n: int, reward: str = "proxy_accuracy", offset: int = 0) -> pl.DataFrame:
    return pl.DataFrame({
        "iteration": [iteration] * n,
        "rollout_id": [f"r{i + offset}" for i in range(n)],
        "question_id": [f"q{(i + offset) % 3}" for i in range(n)],
        "reward": [reward] * n,
        "score": [i / max(n, 1) for i in range(n)],
        "status": ["ok"] * n,
    })


def snapshot(lake: Lake) -> dict:
    """Every table's rows, sorted, as plain Python: equal snapshots mean an unchanged lake."""
    return {name: sorted(map(repr, lake.read(name).rows())) for name in lake.contract}


def test_contract_reads_schema_sql():
    spec = contract()
    assert set(spec) >= {"meta_questions", "proxy_questions", "rollouts", "judgments", "scores", "pairs",
                         "runs", "evaluations"}
    assert spec["judgments"].key == ("iteration", "rollout_id", "statement_id", "judge")
    assert spec["meta_questions"].partitioned is False and spec["scores"].partitioned is True
    assert "predicted" not in spec["judgments"].not_null


def test_empty_tables_are_typed_views(lake):
    frame = lake.read("judgments")
    assert frame.height == 0
    assert frame.schema["predicted"] == pl.Boolean and frame.schema["iteration"] == pl.Int64


def test_roundtrip_and_partition_replace_is_idempotent(lake):
    lake.write("scores", scores(1, 5))
    lake.write("scores", scores(2, 4))
    lake.write("scores", scores(1, 5))  # the same stage again: replaces, never duplicates
    got = lake.sql("SELECT iteration, count(*) AS n FROM scores GROUP BY 1 ORDER BY 1")
    assert got.rows() == [(1, 5), (2, 4)]
    lake.write("scores", scores(1, 2))
    assert lake.sql("SELECT count(*) FROM scores WHERE iteration = 1").item() == 2
    assert lake.iterations("scores") == [1, 2]
    # the iteration lives in the folder name, not in the file
    assert "iteration" not in pq.read_schema(lake.files("scores", 1)[0]).names


def test_named_parts_accumulate_and_replace(lake):
    with lake.transaction() as tx:
        tx.put("scores", scores(1, 3), name="chunk-a")
        tx.put("scores", scores(1, 3, offset=10), name="chunk-b")
    assert lake.read("scores", 1).height == 6
    lake.write("scores", scores(1, 2, offset=10), name="chunk-b", replace_partition=False)
    assert lake.read("scores", 1).height == 5
    with lake.transaction() as tx:
        tx.drop("scores", iteration=1, name="chunk-a")
    assert sorted(lake.read("scores", 1)["rollout_id"]) == ["r10", "r11"]


@pytest.mark.parametrize("frame, message", [
    (scores(1, 3).with_columns(pl.lit("maybe").alias("status")), "status"),
    (scores(1, 3).with_columns(pl.lit(None, pl.Utf8).alias("reward")), "reward is NULL"),
    (scores(1, 3).with_columns(pl.lit("high").alias("score")), "scores.score: expected DOUBLE"),
    (scores(1, 3).with_columns(pl.lit(1).alias("extra")), "unknown column(s) extra"),
    (scores(1, 3).drop("question_id"), "missing column question_id"),
    (pl.concat([scores(1, 3), scores(1, 1)]), "duplicate key"),
])
def test_bad_frames_are_refused_and_nothing_is_written(lake, frame, message):
    lake.write("scores", scores(1, 2), name="kept")
    before = snapshot(lake)
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        lake.write("scores", frame, name="other", replace_partition=False)
    assert snapshot(lake) == before


def test_key_collision_with_existing_file_names_the_file(lake):
    lake.write("scores", scores(1, 3), name="first")
    with pytest.raises(ValidationError, match=r"rollout_id='r0'.*first\.parquet"):
        lake.write("scores", scores(1, 1), name="second", replace_partition=False)


def test_key_without_iteration_is_unique_over_the_whole_table(lake):
    row = {"iteration": 1, "run_id": "same", "stage": "train", "status": "finished",
           "started_at": datetime(2026, 1, 1)}
    lake.write("runs", [row])
    with pytest.raises(ValidationError, match="run_id='same'"):
        lake.write("runs", [{**row, "iteration": 2}])


def test_failed_transaction_writes_nothing(lake):
    lake.write("scores", scores(1, 2))
    before = snapshot(lake)
    with pytest.raises(ValidationError):
        with lake.transaction() as tx:
            tx.replace("scores", scores(1, 7))
            tx.put("scores", scores(2, 1).with_columns(pl.lit("bad").alias("status")))
    with pytest.raises(RuntimeError):
        with lake.transaction() as tx:
            tx.replace("scores", scores(1, 7))
            raise RuntimeError("the stage crashed before commit")
    assert snapshot(lake) == before


def test_iteration_mismatch_and_unknown_table(lake):
    with pytest.raises(ValidationError, match="iteration"):
        lake.write("scores", scores(1, 2), iteration=2)
    with pytest.raises(LakeError, match="no table 'nope'"):
        lake.read("nope")


def test_old_files_read_new_nullable_columns_as_null(lake):
    """A file written before a nullable column was added still reads (schema evolution)."""
    lake.write("meta_questions", [{"question_id": "q1", "text": "Why?", "domain": "d", "split": "train",
                                   "source": "s"}])
    f = lake.files("meta_questions")[0]
    pq.write_table(pq.read_table(f).drop_columns(["context"]), f)
    got = lake.read("meta_questions")
    assert got["context"].to_list() == [None] and got["question_id"].to_list() == ["q1"]


def test_catalog_file_is_queryable_by_duckdb(lake):
    import duckdb

    lake.write("scores", scores(3, 4))
    con = duckdb.connect(str(lake.root / "lake.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM scores").fetchone()[0] == 4
    con.close()


_WRITER = textwrap.dedent("""
    import sys, polars as pl
    from proxyreward_pl.lake import Lake
    lake = Lake(sys.argv[1])
    n = int(sys.argv[2])
    with lake.transaction() as tx:
        tx.replace("scores", pl.DataFrame({
            "iteration": [1] * n, "rollout_id": [f"new{i}" for i in range(n)],
            "question_id": ["q"] * n, "reward": ["proxy_accuracy"] * n,
            "score": [0.5] * n, "status": ["ok"] * n}))
        tx.replace("pairs", pl.DataFrame({
            "iteration": [1], "question_id": ["q"], "chosen_rollout_id": ["new0"],
            "rejected_rollout_id": ["new1"], "chosen_score": [1.0], "rejected_score": [0.0],
            "score_variance": [0.25]}))
""")


def _run_writer(lake: Lake, n: int, crash_at: str | None) -> int:
    env = {**os.environ}
    if crash_at:
        env["PROXYREWARD_TEST_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, "-c", _WRITER, str(lake.root), str(n)], env=env).returncode


@pytest.mark.parametrize("crash_at, committed", [("staged", False), ("journaled", True), ("applying", True)])
def test_sigkill_during_commit_leaves_old_or_new_state_never_a_mix(lake, crash_at, committed):
    lake.write("scores", scores(1, 3))
    before = snapshot(lake)
    assert _run_writer(lake, 4, crash_at) == -signal.SIGKILL
    after = snapshot(Lake(lake.root))  # reopening recovers
    if committed:
        assert lake.sql("SELECT count(*) FROM scores").item() == 4
        assert lake.sql("SELECT count(*) FROM pairs").item() == 1
    else:
        assert after == before
    assert not any((lake.root / "_staging").iterdir())


def test_sigkill_at_random_moments_never_leaves_a_partial_write(lake):
    """Kill a large two-table write at random times: each time the lake is wholly old or wholly new."""
    lake.write("scores", scores(1, 3))
    old = snapshot(lake)
    n = 200_000
    outcomes = set()
    for delay in [0.2 + 0.1 * i for i in range(20)]:
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(lake.root), str(n)])
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reopened = Lake(lake.root)
        count = reopened.sql("SELECT count(*) FROM scores").item()
        pairs = reopened.sql("SELECT count(*) FROM pairs").item()
        assert (count, pairs) in ((3, 0), (n, 1)), (delay, count, pairs)
        if count == 3:
            assert snapshot(reopened) == old
        outcomes.add(count)
        if count == n:
            break
    assert not any((lake.root / "_staging").iterdir())
