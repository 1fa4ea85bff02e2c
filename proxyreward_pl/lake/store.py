"""The data lake: Parquet files under `<root>/tables/<table>/iteration=<n>/`, DuckDB views over them.

Every write is a `Transaction`: its frames are checked against the contract in `datalake/sql/schema.sql`
(columns, types, NOT NULL, CHECK, key uniqueness over the whole table), written under
`<root>/_staging/<txid>/`, and only then committed by atomically renaming a journal into place. The
journal lists the renames that publish the new files and retire the replaced ones; applying it is
idempotent. A crash before the journal lands leaves the lake exactly as it was (the staging folder is
swept on the next open); a crash after it is rolled forward on the next open. Writers serialise on a
file lock, so two processes never interleave commits.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ..paths import SQL_DIR, resolve_lake
from .contract import Frame, LakeError, TableSpec, ValidationError, check_rows, conform, contract, to_arrow

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Fault injection for the crash tests: SIGKILL this process at a named point of a commit.
_CRASH_ENV = "PROXYREWARD_TEST_CRASH_AT"


def unreadable(path: Path) -> str | None:
    """What is wrong with a Parquet file that cannot be read whole (None if it can)."""
    try:
        pq.read_table(path)
    except Exception as exc:  # pyarrow reports thrift, footer and page errors under several types
        return f"unreadable Parquet ({type(exc).__name__}: {exc})".replace("\n", " ")
    return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _maybe_crash(point: str) -> None:
    if os.environ.get(_CRASH_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class _Put:
    table: str
    iteration: int
    name: str
    data: pa.Table


@dataclass
class _Drop:
    table: str
    iteration: int
    name: str | None  # None: every file of the partition


class Lake:
    """A lake rooted at `root` (default: `PROXYREWARD_LAKE` or the repository's `datalake/`)."""

    def __init__(self, root: str | os.PathLike | None = None, sql_dir: Path = SQL_DIR):
        self.root = resolve_lake(root).resolve()
        self.sql_dir = sql_dir
        self.contract = contract(sql_dir)
        self.tables_dir = self.root / "tables"
        self.staging_dir = self.root / "_staging"
        self.tables_dir.mkdir(parents=True, exist_ok=True)
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        with self._write_lock():
            self._recover()

    # -- layout -------------------------------------------------------------------------------
    def spec(self, table: str) -> TableSpec:
        try:
            return self.contract[table]
        except KeyError:
            raise LakeError(f"no table {table!r}; tables: {', '.join(self.contract)}") from None

    def adapter_dir(self, iteration: int) -> Path:
        """Where iteration N's trained LoRA adapter lives (the policy of iteration N)."""
        return self.root / "adapters" / f"iteration={int(iteration)}"

    def model_dir(self, iteration: int) -> Path:
        """Where iteration N's fully fine-tuned model lives (the policy of iteration N, without LoRA)."""
        return self.root / "models" / f"iteration={int(iteration)}"

    def partition_dir(self, table: str, iteration: int) -> Path:
        return self.tables_dir / table / f"iteration={int(iteration)}"

    def iterations(self, table: str) -> list[int]:
        base = self.tables_dir / self.spec(table).name
        found = []
        for d in base.glob("iteration=*"):
            if d.is_dir() and any(d.glob("*.parquet")):
                found.append(int(d.name.split("=", 1)[1]))
        return sorted(found)

    def files(self, table: str, iteration: int | None = None) -> list[Path]:
        base = self.tables_dir / self.spec(table).name
        pattern = f"iteration={int(iteration)}/*.parquet" if iteration is not None else "iteration=*/*.parquet"
        return sorted(base.glob(pattern))

    # -- reading ------------------------------------------------------------------------------
    def _view_sql(self, spec: TableSpec) -> str:
        files = self.files(spec.name)
        if not files:
            return f"CREATE OR REPLACE VIEW main.{spec.name} AS SELECT * FROM contract.{spec.name}"
        source = (
            f"read_parquet('{self.tables_dir / spec.name}/iteration=*/*.parquet', hive_partitioning = true, "
            "hive_types = {'iteration': BIGINT}, union_by_name = true)"
        )
        present = {r[0] for r in duckdb.sql(f"DESCRIBE SELECT * FROM {source}").fetchall()}
        cols = ", ".join(
            f'"{c}"' if c in present else f'CAST(NULL AS {spec.types[c]}) AS "{c}"' for c in spec.columns
        )
        return f"CREATE OR REPLACE VIEW main.{spec.name} AS SELECT {cols} FROM {source}"

    def _create_views(self, con: duckdb.DuckDBPyConnection) -> None:
        con.execute("CREATE SCHEMA IF NOT EXISTS contract; SET schema = 'contract'")
        for spec in self.contract.values():
            con.execute(f"DROP TABLE IF EXISTS contract.{spec.name}")
        con.execute((self.sql_dir / "schema.sql").read_text())
        con.execute("SET schema = 'main'")
        for spec in self.contract.values():
            con.execute(self._view_sql(spec))

    def connect(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with one view per table over the lake's Parquet files."""
        con = duckdb.connect(":memory:")
        self._create_views(con)
        return con

    def sql(self, query: str, params: list | dict | None = None) -> pl.DataFrame:
        """A query's result as a polars frame. When DuckDB cannot read the lake's files, the error names the
        file that is broken (DuckDB's own message does not)."""
        try:
            con = self.connect()
        except duckdb.Error as exc:
            self._name_broken_files(exc)
            raise
        try:
            return con.sql(query, params=params).pl()
        except duckdb.Error as exc:
            if not isinstance(exc, duckdb.ParserException | duckdb.BinderException | duckdb.CatalogException):
                self._name_broken_files(exc)
            raise
        finally:
            con.close()

    def _name_broken_files(self, exc: Exception) -> None:
        broken = [(f, why) for table in self.contract for f in self.files(table) if (why := unreadable(f))]
        if broken:
            listed = "; ".join(f"{f}: {why}" for f, why in broken)
            raise LakeError(f"{listed} (DuckDB: {exc}); `proxyreward lake check` lists every problem") from None

    def read(self, table: str, iteration: int | None = None) -> pl.DataFrame:
        spec = self.spec(table)
        where = f" WHERE iteration = {int(iteration)}" if iteration is not None and spec.partitioned else ""
        return self.sql(f"SELECT * FROM {spec.name}{where}")

    def run_sql_file(self, path: str | os.PathLike, params: dict | None = None) -> pl.DataFrame:
        """Run a named SQL file: a bare name is looked up in `datalake/sql/` (`.sql` optional)."""
        p = Path(path)
        if not p.exists():
            p = self.sql_dir / (p if p.suffix == ".sql" else p.with_suffix(".sql"))
        if not p.exists():
            raise LakeError(f"no SQL file {path} (nor {p})")
        return self.sql(p.read_text(), params)

    def status(self) -> pl.DataFrame:
        """Rows and files per table and iteration, read from Parquet footers (no data scanned)."""
        rows = []
        for name in self.contract:
            for it in self.iterations(name):
                files = self.files(name, it)
                n = sum(self._footer(f).num_rows for f in files)
                rows.append({"table": name, "iteration": it, "rows": n, "files": len(files)})
            if not self.iterations(name):
                rows.append({"table": name, "iteration": None, "rows": 0, "files": 0})
        return pl.DataFrame(rows, schema={"table": pl.Utf8, "iteration": pl.Int64, "rows": pl.Int64, "files": pl.Int64})

    @staticmethod
    def _footer(path: Path):
        try:
            return pq.ParquetFile(path).metadata
        except Exception as exc:  # pyarrow raises several types for a broken footer
            raise LakeError(f"{path}: unreadable Parquet ({type(exc).__name__}: {exc}); `proxyreward lake check` "
                            "lists every problem") from None

    def refresh_catalog(self) -> bool:
        """Write the views into `<root>/lake.duckdb` for outside tools; skip if another process holds it."""
        try:
            con = duckdb.connect(str(self.root / "lake.duckdb"))
        except duckdb.IOException:
            return False
        try:
            self._create_views(con)
        finally:
            con.close()
        return True

    # -- writing ------------------------------------------------------------------------------
    def transaction(self) -> Transaction:
        return Transaction(self)

    def write(self, table: str, frame: Frame, *, iteration: int | None = None, name: str = "data",
              replace_partition: bool = True) -> None:
        """Write one frame in its own transaction (see `Transaction.put` / `Transaction.replace`)."""
        with self.transaction() as tx:
            if replace_partition:
                tx.replace(table, frame, iteration=iteration, name=name)
            else:
                tx.put(table, frame, iteration=iteration, name=name)

    @contextlib.contextmanager
    def _write_lock(self) -> Iterator[None]:
        with open(self.root / ".write.lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _recover(self) -> None:
        """Roll committed journals forward; sweep staging folders that never committed."""
        for txdir in sorted(self.staging_dir.iterdir()):
            journal = txdir / "COMMITTED.json"
            if journal.exists():
                self._apply(json.loads(journal.read_text()))
            shutil.rmtree(txdir, ignore_errors=True)

    def _apply(self, ops: list[dict]) -> None:
        touched = set()
        for op in ops:
            src, dst = self.root / op["src"], self.root / op["dst"]
            if src.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dst)
                touched.add(dst.parent)
            if op["op"] == "drop":
                touched.add(src.parent)
            _maybe_crash("applying")
        for d in touched:
            if d.exists():
                _fsync_dir(d)
                if d.is_relative_to(self.tables_dir) and not any(d.iterdir()):
                    d.rmdir()


class Transaction:
    """Puts and drops that land together or not at all. Use as a context manager, or call commit()."""

    def __init__(self, lake: Lake):
        self.lake = lake
        self._puts: list[_Put] = []
        self._drops: list[_Drop] = []
        self.committed = False

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()

    def _iteration(self, spec: TableSpec, data: pa.Table, iteration: int | None) -> int:
        if not spec.partitioned:
            if iteration not in (None, 0):
                raise LakeError(f"{spec.name} has no iterations; it lives in iteration=0")
            return 0
        values = set(data.column("iteration").to_pylist()) if data.num_rows else set()
        if iteration is None:
            if len(values) != 1:
                raise LakeError(f"{spec.name}: give iteration=; the frame holds {sorted(values) or 'no rows'}")
            return int(values.pop())
        if values - {int(iteration)}:
            raise ValidationError(f"{spec.name}: rows of iteration {sorted(values)} written to iteration {iteration}")
        return int(iteration)

    def put(self, table: str, frame: Frame, *, iteration: int | None = None, name: str = "data") -> None:
        """Add (or overwrite) the file `<name>.parquet` of a partition."""
        spec = self.lake.spec(table)
        if not _NAME.match(name):
            raise LakeError(f"bad file name {name!r}: letters, digits, '_', '.', '-' only")
        raw = to_arrow(frame)
        if spec.partitioned and "iteration" not in raw.column_names and iteration is not None:
            raw = raw.append_column("iteration", pa.array([int(iteration)] * raw.num_rows, pa.int64()))
        data = conform(spec, raw)
        check_rows(spec, data)
        it = self._iteration(spec, data, iteration)
        self._puts = [p for p in self._puts if (p.table, p.iteration, p.name) != (table, it, name)]
        self._puts.append(_Put(table, it, name, data))

    def drop(self, table: str, *, iteration: int | None = None, name: str | None = None) -> None:
        """Remove one file of a partition, or the whole partition when `name` is None."""
        spec = self.lake.spec(table)
        it = 0 if not spec.partitioned else iteration
        if it is None:
            raise LakeError(f"{table}: drop needs iteration=")
        self._drops.append(_Drop(table, int(it), name))

    def replace(self, table: str, frame: Frame, *, iteration: int | None = None, name: str = "data") -> None:
        """Make the partition hold exactly this frame."""
        self.put(table, frame, iteration=iteration, name=name)
        put = self._puts[-1]
        self.drop(table, iteration=put.iteration)

    # -- commit -------------------------------------------------------------------------------
    def _final_files(self) -> dict[str, tuple[list[Path], list[_Put]]]:
        """Per affected table: the existing files that survive, and the new frames."""
        lake = self.lake
        result = {}
        for table in {p.table for p in self._puts} | {d.table for d in self._drops}:
            puts = [p for p in self._puts if p.table == table]
            replaced = {lake.partition_dir(table, p.iteration) / f"{p.name}.parquet" for p in puts}
            kept = []
            for f in lake.files(table):
                it = int(f.parent.name.split("=", 1)[1])
                dropped = any(d.table == table and d.iteration == it and d.name in (None, f.stem) for d in self._drops)
                if f not in replaced and not dropped:
                    kept.append(f)
            result[table] = (kept, puts)
        return result

    def _check_keys(self, table: str, kept: list[Path], puts: list[_Put]) -> None:
        spec = self.lake.spec(table)
        if not puts:
            return
        if "iteration" in spec.key:  # only the partitions being written can collide
            its = {p.iteration for p in puts}
            kept = [f for f in kept if int(f.parent.name.split("=", 1)[1]) in its]
        con = duckdb.connect(":memory:")
        keys = ", ".join(f'"{k}"' for k in spec.key)
        parts = []
        for i, p in enumerate(puts):
            con.register(f"new_{i}", p.data.select(list(spec.key)))
            parts.append(f"SELECT {keys}, 'the new rows of {p.name}' AS _origin FROM new_{i}")
        if kept:
            files = ", ".join(f"'{f}'" for f in kept)
            hive = "hive_partitioning = true, hive_types = {'iteration': BIGINT}"
            parts.append(f"SELECT {keys}, filename AS _origin FROM read_parquet([{files}], {hive}, filename = true)")
        dup = con.execute(
            f"SELECT {keys}, list(DISTINCT _origin) AS origins FROM ({' UNION ALL '.join(parts)}) "
            f"GROUP BY ALL HAVING count(*) > 1 LIMIT 1"
        ).fetchone()
        if dup:
            key = ", ".join(f"{k}={v!r}" for k, v in zip(spec.key, dup[:-1], strict=True))
            where = "; ".join(str(Path(o).relative_to(self.lake.root)) if o.startswith("/") else o for o in dup[-1])
            raise ValidationError(f"{table}: duplicate key ({key}) in {where}")

    def commit(self) -> None:
        if self.committed:
            raise LakeError("transaction already committed")
        lake = self.lake
        txid = uuid.uuid4().hex
        with lake._write_lock():
            for table, (kept, puts) in self._final_files().items():
                self._check_keys(table, kept, puts)
            txdir = lake.staging_dir / txid
            txdir.mkdir()
            ops: list[dict] = []
            try:
                put_targets = set()
                for i, p in enumerate(self._puts):
                    staged = txdir / f"{i:05d}.parquet"
                    stored = p.data.drop_columns(["iteration"]) if "iteration" in p.data.column_names else p.data
                    pq.write_table(stored, staged, compression="zstd")
                    with open(staged, "rb") as fh:
                        os.fsync(fh.fileno())
                    dst = lake.partition_dir(p.table, p.iteration) / f"{p.name}.parquet"
                    put_targets.add(dst)
                    ops.append({"op": "put", "src": str(staged.relative_to(lake.root)),
                                "dst": str(dst.relative_to(lake.root))})
                trash = txdir / "trash"
                for d in self._drops:
                    victims = lake.files(d.table, d.iteration)
                    for f in victims:
                        if f in put_targets or (d.name is not None and f.stem != d.name):
                            continue
                        gone = trash / d.table / f.parent.name / f.name
                        ops.insert(0, {"op": "drop", "src": str(f.relative_to(lake.root)),
                                       "dst": str(gone.relative_to(lake.root))})
                _maybe_crash("staged")
                pending = txdir / "journal.tmp"
                pending.write_text(json.dumps(ops))
                with open(pending, "rb") as fh:
                    os.fsync(fh.fileno())
                os.replace(pending, txdir / "COMMITTED.json")  # the commit point
                _fsync_dir(txdir)
            except BaseException:
                shutil.rmtree(txdir, ignore_errors=True)
                raise
            _maybe_crash("journaled")
            lake._apply(ops)
            shutil.rmtree(txdir, ignore_errors=True)
        self.committed = True
        lake.refresh_catalog()

