"""The `runs` table: one row per stage run, written when it starts and again when it ends."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

from . import lineage
from .store import Lake


def _row(run_id: str, iteration: int, stage: str, reward: str | None, status: str, started: datetime, config: dict,
         metrics: dict | None, finished: datetime | None, inputs: dict | None, output: str | None) -> dict:
    return {"iteration": iteration, "run_id": run_id, "stage": stage, "reward": reward, "status": status,
            "started_at": started.replace(tzinfo=None),
            "finished_at": finished.replace(tzinfo=None) if finished else None,
            "config": json.dumps(config, default=str, sort_keys=True),
            "metrics": json.dumps(metrics, default=str, sort_keys=True) if metrics is not None else None,
            "inputs": json.dumps(inputs, sort_keys=True) if inputs is not None else None, "output": output}


@contextlib.contextmanager
def record_run(lake: Lake, iteration: int, stage: str, config: dict, reward: str | None = None,
               force: bool = False) -> Iterator[dict]:
    """Record a stage run (`reward`: which reward a `score` run produced): 'running' now; 'finished' with the
    metrics the body put in the yielded dict, or 'failed' with the error. The row lives in its own file, so
    each update replaces it.

    A loop stage (rollout, score, select, train, evaluate) first refuses stale or missing inputs
    (`lineage.check_inputs`, unless `force`), records their identities, and at the end the identity of its
    output, so that later runs can tell whether what they read is still current."""
    key = lineage.Key(stage, iteration, reward)
    config = json.loads(json.dumps(config, default=str))  # as the row stores it, and as lineage reads it back
    tracked = stage in lineage.LOOP_STAGES
    if tracked and not force:
        lineage.check_inputs(lake, key, config)
    inputs = lineage.inputs(lake, key, config) if tracked else None
    started = datetime.now(UTC)
    run_id = "-".join([stage, *([reward] if reward else []), str(iteration), f"{started:%Y%m%dT%H%M%S}",
                       uuid.uuid4().hex[:6]])
    name = f"run-{run_id}"

    def write(status: str, metrics: dict | None, finished: datetime | None, output: str | None = None) -> None:
        lake.write("runs", [_row(run_id, iteration, stage, reward, status, started, config, metrics, finished,
                                 inputs, output)], iteration=iteration, name=name, replace_partition=False)

    write("running", None, None)
    metrics: dict = {}
    try:
        yield metrics
    except BaseException as exc:
        metrics["error"] = f"{type(exc).__name__}: {exc}"
        write("failed", metrics, datetime.now(UTC))
        raise
    write("finished", metrics, datetime.now(UTC), lineage.output(lake, key, config) if tracked else None)

