"""The `runs` table: one row per stage run, written when it starts and again when it ends."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

from .lake import Lake


def _row(run_id: str, iteration: int, stage: str, status: str, started: datetime, config: dict,
         metrics: dict | None, finished: datetime | None) -> dict:
    return {"iteration": iteration, "run_id": run_id, "stage": stage, "status": status,
            "started_at": started.replace(tzinfo=None),
            "finished_at": finished.replace(tzinfo=None) if finished else None,
            "config": json.dumps(config, default=str, sort_keys=True),
            "metrics": json.dumps(metrics, default=str, sort_keys=True) if metrics is not None else None}


@contextlib.contextmanager
def record_run(lake: Lake, iteration: int, stage: str, config: dict) -> Iterator[dict]:
    """Record a stage run: 'running' now; 'finished' with the metrics the body put in the yielded dict, or
    'failed' with the error. The row lives in its own file, so each update replaces it."""
    run_id = f"{stage.replace(':', '-')}-{iteration}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    started = datetime.now(UTC)
    name = f"run-{run_id}"
    lake.write("runs", [_row(run_id, iteration, stage, "running", started, config, None, None)],
               iteration=iteration, name=name, replace_partition=False)
    metrics: dict = {}
    try:
        yield metrics
    except BaseException as exc:
        metrics["error"] = f"{type(exc).__name__}: {exc}"
        lake.write("runs", [_row(run_id, iteration, stage, "failed", started, config, metrics, datetime.now(UTC))],
                   iteration=iteration, name=name, replace_partition=False)
        raise
    lake.write("runs", [_row(run_id, iteration, stage, "finished", started, config, metrics, datetime.now(UTC))],
               iteration=iteration, name=name, replace_partition=False)


def last_finished(lake: Lake, iteration: int, stage: str) -> dict | None:
    rows = lake.sql("SELECT * FROM runs WHERE iteration = ? AND stage = ? AND status = 'finished' "
                    "ORDER BY finished_at DESC LIMIT 1", [iteration, stage]).to_dicts()
    if not rows:
        return None
    row = rows[0]
    row["metrics"] = json.loads(row["metrics"] or "{}")
    return row
