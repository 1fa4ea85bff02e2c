"""The lake's contract: the tables of `datalake/sql/schema.sql`, and the checks every frame passes before
it is written (columns and lossless casts, NOT NULL, CHECK). Key uniqueness needs the lake's existing
files, so `lake.Transaction` checks it at commit."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa

from ..errors import ProxyRewardError
from ..paths import SQL_DIR

Frame = pl.DataFrame | pa.Table | list[dict[str, Any]]


class LakeError(ProxyRewardError):
    """A lake operation that cannot go ahead; the message says what and where."""


class ValidationError(LakeError):
    """A frame breaks the contract in schema.sql; nothing was written."""


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[str, ...]
    types: dict[str, str]  # column -> DuckDB type
    not_null: frozenset[str]
    checks: tuple[str, ...]  # CHECK expressions
    key: tuple[str, ...]
    schema: pa.Schema

    @property
    def partitioned(self) -> bool:
        return "iteration" in self.columns


def _contract_connection(sql_dir: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    con.execute("CREATE SCHEMA contract; SET schema = 'contract'")
    con.execute((sql_dir / "schema.sql").read_text())
    con.execute("SET schema = 'main'")
    return con


@functools.cache
def contract(sql_dir: Path = SQL_DIR) -> dict[str, TableSpec]:
    """The tables of `schema.sql`, read back from DuckDB's catalog."""
    con = _contract_connection(sql_dir)
    specs = {}
    tables = con.sql(
        "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'contract' ORDER BY table_oid"
    ).fetchall()
    for (name,) in tables:
        cols = con.execute(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_schema = 'contract' AND table_name = ? ORDER BY ordinal_position",
            [name],
        ).fetchall()
        cons = con.execute(
            "SELECT constraint_type, expression, constraint_column_names FROM duckdb_constraints() "
            "WHERE schema_name = 'contract' AND table_name = ?",
            [name],
        ).fetchall()
        key = next((tuple(c[2]) for c in cons if c[0] == "PRIMARY KEY"), ())
        if not key:
            raise LakeError(f"{sql_dir / 'schema.sql'}: table {name} has no PRIMARY KEY")
        specs[name] = TableSpec(
            name=name,
            columns=tuple(c[0] for c in cols),
            types={c[0]: c[1] for c in cols},
            not_null=frozenset(c[0] for c in cols if c[2] == "NO"),
            checks=tuple(c[1] for c in cons if c[0] == "CHECK"),
            key=key,
            schema=con.sql(f"SELECT * FROM contract.{name} LIMIT 0").to_arrow_table().schema,
        )
    return specs


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _castable(src: pa.DataType, dst: pa.DataType) -> bool:
    """Casts that cannot change meaning: same kind, widening or same-width (checked for overflow)."""
    if src == dst or pa.types.is_null(src):
        return True
    if pa.types.is_dictionary(src):
        return _castable(src.value_type, dst)
    kinds = (
        (_is_string, _is_string),
        (pa.types.is_integer, pa.types.is_integer),
        (pa.types.is_integer, pa.types.is_floating),
        (pa.types.is_floating, pa.types.is_floating),
        (pa.types.is_timestamp, pa.types.is_timestamp),
        (pa.types.is_boolean, pa.types.is_boolean),
    )
    return any(a(src) and b(dst) for a, b in kinds)


def to_arrow(frame: Frame) -> pa.Table:
    if isinstance(frame, pa.Table):
        return frame
    if isinstance(frame, pl.DataFrame):
        return frame.to_arrow()
    if isinstance(frame, list):
        return pa.Table.from_pylist(frame) if frame else pa.table({})
    raise TypeError(f"cannot write a {type(frame).__name__}; give a polars DataFrame, Arrow table or rows")


def conform(spec: TableSpec, frame: Frame) -> pa.Table:
    """Cast `frame` to the table's contract schema, or raise ValidationError naming the column."""
    table = to_arrow(frame)
    unknown = [c for c in table.column_names if c not in spec.types]
    if unknown:
        raise ValidationError(
            f"{spec.name}: unknown column(s) {', '.join(unknown)} (not in datalake/sql/schema.sql)"
        )
    arrays = []
    for field in spec.schema:
        if field.name not in table.column_names:
            if field.name in spec.not_null and table.num_rows:
                raise ValidationError(f"{spec.name}: missing column {field.name} ({spec.types[field.name]} NOT NULL)")
            arrays.append(pa.nulls(table.num_rows, field.type))
            continue
        col = table.column(field.name)
        if not _castable(col.type, field.type):
            raise ValidationError(
                f"{spec.name}.{field.name}: expected {spec.types[field.name]}, got {col.type}"
            )
        try:
            arrays.append(col.cast(field.type, safe=True))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ValidationError(f"{spec.name}.{field.name}: {exc}") from None
    return pa.Table.from_arrays(arrays, schema=spec.schema)


def check_rows(spec: TableSpec, table: pa.Table) -> None:
    """NOT NULL and CHECK rules of the contract, reported with the first offending row (0-based)."""
    con = duckdb.connect(":memory:")
    con.register("incoming", table)
    numbered = "SELECT row_number() OVER () - 1 AS _row, * FROM incoming"
    for col in sorted(spec.not_null):
        hit = con.execute(f'SELECT _row FROM ({numbered}) WHERE "{col}" IS NULL LIMIT 1').fetchone()
        if hit:
            raise ValidationError(f"{spec.name} row {hit[0]}: {col} is NULL (NOT NULL in schema.sql)")
    for expr in spec.checks:
        hit = con.sql(f"SELECT * FROM ({numbered}) WHERE NOT ({expr}) LIMIT 1").to_arrow_table()
        if hit.num_rows:
            row = hit.to_pylist()[0]
            shown = {k: v for k, v in row.items() if k != "_row" and k in expr}
            raise ValidationError(f"{spec.name} row {row['_row']}: {shown} breaks CHECK {expr}")
