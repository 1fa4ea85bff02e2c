"""`proxyreward lake check`: every file of the lake against the contract, and what lies in the lake without a
run to account for it.

A problem names its file and what is wrong with it: a Parquet file that cannot be read, columns or values the
contract refuses, a row in the wrong partition, a key held twice; an adapter or model with no finished
`train` run (or another one than the run published), and leftovers of an interrupted write.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from .contract import ValidationError, check_rows, conform
from .lineage import policy_identity
from .store import Lake, unreadable


def file_problems(lake: Lake) -> list[str]:
    """Each table file against the contract: readable, its columns and values, its partition."""
    problems = []
    for table_dir in sorted(p for p in lake.tables_dir.iterdir() if p.is_dir()):
        if table_dir.name not in lake.contract:
            problems.append(f"{table_dir}: no table of that name in datalake/sql/schema.sql")
            continue
        spec = lake.contract[table_dir.name]
        for part in sorted(table_dir.iterdir()):
            if not part.name.startswith("iteration="):
                problems.append(f"{part}: not an iteration=<n> partition")
                continue
            for f in sorted(part.iterdir()):
                if f.suffix != ".parquet":
                    problems.append(f"{f}: not a Parquet file (a leftover?)")
                    continue
                why = unreadable(f)
                if why:
                    problems.append(f"{f}: {why}")
                    continue
                data = pq.read_table(f)
                n = int(part.name.split("=", 1)[1])
                if spec.partitioned and "iteration" not in data.column_names:  # the partition's name holds it
                    data = data.append_column("iteration", pa.array([n] * data.num_rows, pa.int64()))
                try:
                    conformed = conform(spec, data)
                    check_rows(spec, conformed)
                except ValidationError as exc:
                    problems.append(f"{f}: {exc}")
                    continue
                if spec.partitioned and set(conformed.column("iteration").to_pylist()) - {n}:
                    problems.append(f"{f}: rows of another iteration than its partition's ({n})")
    return problems


def key_problems(lake: Lake) -> list[str]:
    """Keys held by more than one row (over the whole table, as every write checks)."""
    problems = []
    for name, spec in lake.contract.items():
        files = [f for f in lake.files(name) if unreadable(f) is None]
        if not files:
            continue
        keys = ", ".join(f'"{k}"' for k in spec.key)
        listed = ", ".join(f"'{f}'" for f in files)
        con = duckdb.connect(":memory:")  # not the lake's views: they would read the broken files too
        try:
            dup = con.execute(f"SELECT {keys}, list(DISTINCT filename) FROM read_parquet([{listed}], "
                              "hive_partitioning = true, hive_types = {'iteration': BIGINT}, filename = true, "
                              "union_by_name = true) GROUP BY ALL HAVING count(*) > 1 LIMIT 1").fetchone()
        finally:
            con.close()
        if dup:
            key = ", ".join(f"{k}={v!r}" for k, v in zip(spec.key, dup[:-1], strict=True))
            problems.append(f"{name}: key ({key}) held twice, in {'; '.join(dup[-1])}")
    return problems


def orphans(lake: Lake) -> list[str]:
    """Policies no finished train run published (or other weights than it published), and leftovers of
    interrupted writes."""
    problems = []
    runs = []
    for f in lake.files("runs"):
        if unreadable(f) is None:  # a partition's files hold no iteration column: it is in the folder's name
            runs += [{**r, "iteration": int(f.parent.name.split("=", 1)[1])} for r in pq.read_table(f).to_pylist()]
    published = {}  # iteration -> its latest finished train run
    for run in sorted(runs, key=lambda r: r["finished_at"] or r["started_at"]):
        if run["stage"] == "train" and run["status"] == "finished":
            published[run["iteration"]] = run
    for folder in (lake.root / "adapters", lake.root / "models"):
        for d in sorted(folder.iterdir()) if folder.exists() else []:
            if d.name.startswith("."):
                problems.append(f"{d}: leftover of an interrupted publish")
                continue
            if not d.name.startswith("iteration="):
                problems.append(f"{d}: not an iteration=<n> folder")
                continue
            run = published.get(int(d.name.split("=", 1)[1]))
            if run is None:
                problems.append(f"{d}: no finished train run published it")
            elif run.get("output") and run["output"] != policy_identity(lake, int(d.name.split("=", 1)[1]), ""):
                problems.append(f"{d}: holds other weights ({policy_identity(lake, int(d.name.split('=', 1)[1]), '')})"
                                f" than its train run published ({run['output']})")
    for d in sorted(lake.staging_dir.iterdir()) if lake.staging_dir.exists() else []:
        problems.append(f"{d}: a staged write that never committed")
    return problems


def check(lake: Lake) -> list[str]:
    return file_problems(lake) + key_problems(lake) + orphans(lake)
