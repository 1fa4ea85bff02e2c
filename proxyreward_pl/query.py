"""SQL on the lake from the command line: `proxyreward sql` and `proxyreward lake status`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

import polars as pl

from .lake import Lake, LakeError


def render(frame: pl.DataFrame, format: str = "table", max_rows: int = 200) -> str:
    if format == "csv":
        return frame.write_csv()
    if format == "json":
        return frame.write_ndjson()
    with pl.Config(tbl_rows=max_rows, tbl_cols=-1, fmt_str_lengths=100, tbl_width_chars=160,
                   tbl_hide_dataframe_shape=True, tbl_formatting="UTF8_FULL_CONDENSED"):
        text = str(frame)
    more = f"\n({frame.height} rows, {max_rows} shown)" if frame.height > max_rows else ""
    return text + more + "\n"


def sql(query: str | None = None, file: Path | None = None,
        format: Literal["table", "csv", "json"] = "table", out: Path | None = None,
        lake: str | None = None) -> pl.DataFrame:
    """Run SQL over the lake's tables (DuckDB) and print the result.

    Args:
        query: the SQL text.
        file: a .sql file to run instead; a bare name is looked up in datalake/sql/.
        format: table (readable), csv or json (one object per line).
        out: write the result to this file instead of printing it.
        lake: lake root (default: PROXYREWARD_LAKE or the repository's datalake/).
    """
    if (query is None) == (file is None):
        raise LakeError("give a query or --file, not both")
    lk = Lake(lake)
    frame = lk.run_sql_file(file) if file is not None else lk.sql(query)
    text = render(frame, format, max_rows=frame.height if out else 200)
    if out is not None:
        Path(out).write_text(text)
        print(f"wrote {frame.height} rows to {out}")
    else:
        sys.stdout.write(text)
    return frame


def lake_lineage(iteration: int | None = None, format: Literal["table", "csv", "json"] = "table",
                 lake: str | None = None) -> pl.DataFrame:
    """Every stage run of the loop: what it was made from, and whether it is still current (and why not).

    Args:
        iteration: only this iteration.
        format: table (readable: the status; csv and json add every input's identity), csv or json.
        lake: lake root (default: PROXYREWARD_LAKE or the repository's datalake/).
    """
    from .lake.lineage import lineage_table

    frame = lineage_table(Lake(lake), iteration)
    if format != "table":
        sys.stdout.write(render(frame.with_columns(pl.col("finished_at").cast(pl.Utf8)), format))
        return frame
    sys.stdout.write(render(frame.select("iteration", "stage", "reward", "current", "why", "finished_at")))
    stale = frame.filter(~pl.col("current")).height
    print(f"{frame.height} stage runs, {stale} stale" + ("; `proxyreward iterate` redoes them" if stale else ""))
    return frame


def lake_check(lake: str | None = None) -> list[str]:
    """Check every file of the lake against the contract (datalake/sql/schema.sql), every key for doubles, and
    look for policies and staged writes no run accounts for. Exits with an error when anything is wrong.

    Args:
        lake: lake root (default: PROXYREWARD_LAKE or the repository's datalake/).
    """
    from .lake.check import check

    lk = Lake(lake)
    problems = check(lk)
    for p in problems:
        print(p)
    if problems:
        raise LakeError(f"{len(problems)} problem(s) in the lake at {lk.root}")
    print(f"lake at {lk.root}: every file conforms to the contract; nothing unaccounted for")
    return problems


def lake_status(lake: str | None = None) -> pl.DataFrame:
    """Row and file counts per table and iteration.

    Args:
        lake: lake root (default: PROXYREWARD_LAKE or the repository's datalake/).
    """
    lk = Lake(lake)
    frame = lk.status()
    print(f"lake: {lk.root}")
    sys.stdout.write(render(frame))
    return frame
