"""The `runs` table: one row per stage run, written when it starts and again when it ends."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

from .store import Lake


def _row(run_id: str, iteration: int, stage: str, reward: str | None, status: str, started: datetime, config: dict,
         metrics: dict | None, finished: datetime | None) -> dict:
    return {"iteration": iteration, "run_id": run_id, "stage": stage, "reward": reward, "status": status,
            "started_at": started.replace(tzinfo=None),
            "finished_at": finished.replace(tzinfo=None) if finished else None,
            "config": json.dumps(config, default=str, sort_keys=True),
            "metrics": json.dumps(metrics, default=str, sort_keys=True) if metrics is not None else None}


@contextlib.contextmanager
def record_run(lake: Lake, iteration: int, stage: str, config: dict, reward: str | None = None) -> Iterator[dict]:
    """Record a stage run (`reward`: which reward a `score` run produced): 'running' now; 'finished' with the
    metrics the body put in the yielded dict, or 'failed' with the error. The row lives in its own file, so
    each update replaces it."""
    started = datetime.now(UTC)
    run_id = "-".join([stage, *([reward] if reward else []), str(iteration), f"{started:%Y%m%dT%H%M%S}",
                       uuid.uuid4().hex[:6]])
    name = f"run-{run_id}"

    def write(status: str, metrics: dict | None, finished: datetime | None) -> None:
        lake.write("runs", [_row(run_id, iteration, stage, reward, status, started, config, metrics, finished)],
                   iteration=iteration, name=name, replace_partition=False)

    write("running", None, None)
    metrics: dict = {}
    try:
        yield metrics
    except BaseException as exc:
        metrics["error"] = f"{type(exc).__name__}: {exc}"
        write("failed", metrics, datetime.now(UTC))
        raise
    write("finished", metrics, datetime.now(UTC))


def finished(lake: Lake, iteration: int, stage: str, reward: str | None = None) -> bool:
    """Has this stage (for this reward) a finished run in this iteration?"""
    return lake.sql("SELECT count(*) FROM runs WHERE iteration = ? AND stage = ? AND reward IS NOT DISTINCT FROM ? "
                    "AND status = 'finished'", [iteration, stage, reward]).item() > 0
