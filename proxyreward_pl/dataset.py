"""Meta-questions and their proxy statements: import, export and the bundled seed set.

The import record (one JSON object per JSONL line, or one Parquet row):

    question_id      str, unique, non-empty
    text             str, non-empty              the meta-question
    domain           str, default "general"
    split            "train" | "eval", default "train"
    source           str, default "import:<file name>"
    context          str | null, optional        reference text (LongReward's faithfulness)
    proxy_questions  list of {"statement": str, "answer": bool, "weight": number > 0 (optional, default 1)},
                     default []

An import is all or nothing: every record is checked first and the first bad one is reported as
`file:line: field: problem`; only then are both tables written in one lake transaction.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import ProxyRewardError
from .lake import Lake
from .paths import SEED_DIR

SEED_SOURCE = "proxyreward-seed-v1"
FIELDS = ("question_id", "text", "domain", "split", "source", "context", "proxy_questions")


class DatasetError(ProxyRewardError):
    """A bad record: the message names file, line and field. Nothing was written."""


@dataclass
class Record:
    question_id: str
    text: str
    domain: str
    split: str
    source: str
    context: str | None = None
    statements: list[tuple[str, bool]] = field(default_factory=list)
    weights: list[float] | None = None
    """Per statement, its weight in proxy_weighted_accuracy; None: every weight is 1 (stored as NULL)."""


def _fail(where: str, fld: str, problem: str) -> None:
    raise DatasetError(f"{where}: {fld}: {problem}")


def _text(obj: dict, name: str, where: str, *, default: str | None = None, optional: bool = False,
          label: str | None = None) -> str | None:
    label = label or name
    value = obj.get(name, default)
    if value is None and optional:
        return None
    if value is None:
        _fail(where, label, "missing")
    if not isinstance(value, str):
        _fail(where, label, f"expected a string, got {type(value).__name__}")
    if not value.strip() and not optional:
        _fail(where, label, "empty")
    return value


def parse_record(obj: Any, where: str, default_source: str) -> Record:
    """Check one record; `where` is 'file:line' (or 'file:row N') for the error message."""
    if not isinstance(obj, dict):
        _fail(where, "record", f"expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        _fail(where, unknown[0], f"unknown field (allowed: {', '.join(FIELDS)})")
    qid = _text(obj, "question_id", where)
    split = _text(obj, "split", where, default="train")
    if split not in ("train", "eval"):
        _fail(where, "split", f"expected 'train' or 'eval', got {split!r}")
    statements = obj.get("proxy_questions") or []
    if not isinstance(statements, list):
        _fail(where, "proxy_questions", f"expected a list, got {type(statements).__name__}")
    parsed, weights, seen = [], [], set()
    for i, item in enumerate(statements):
        at = f"proxy_questions[{i}]"
        if not isinstance(item, dict):
            _fail(where, at, f"expected an object, got {type(item).__name__}")
        extra = sorted(set(item) - {"statement", "answer", "weight"})
        if extra:
            _fail(where, f"{at}.{extra[0]}", "unknown field (allowed: statement, answer, weight)")
        weight = item.get("weight")
        if weight is not None and (isinstance(weight, bool) or not isinstance(weight, int | float) or weight <= 0):
            _fail(where, f"{at}.weight", f"expected a number > 0, got {weight!r}")
        weights.append(weight)
        stmt = _text(item, "statement", where, label=f"{at}.statement")
        if not isinstance(item.get("answer"), bool):
            got = "missing" if "answer" not in item else f"expected true or false, got {item['answer']!r}"
            _fail(where, f"{at}.answer", got)
        key = " ".join(stmt.lower().split())
        if key in seen:
            _fail(where, f"{at}.statement", "duplicate of an earlier statement of this question")
        seen.add(key)
        parsed.append((stmt.strip(), item["answer"]))
    return Record(
        question_id=qid.strip(),
        text=_text(obj, "text", where).strip(),
        domain=_text(obj, "domain", where, default="general").strip(),
        split=split,
        source=_text(obj, "source", where, default=default_source),
        context=_text(obj, "context", where, optional=True),
        statements=parsed,
        weights=[float(w if w is not None else 1.0) for w in weights] if any(w is not None for w in weights)
        else None,
    )


def _check_unique(records: list[tuple[str, Record]]) -> None:
    first: dict[str, str] = {}
    for where, rec in records:
        if rec.question_id in first:
            _fail(where, "question_id", f"duplicate id {rec.question_id!r} (first at {first[rec.question_id]})")
        first[rec.question_id] = where


def read_jsonl(path: Path) -> list[Record]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{where}: record: malformed JSON ({exc.msg} at column {exc.colno})") from None
            out.append((where, parse_record(obj, where, f"import:{path.name}")))
    _check_unique(out)
    return [r for _, r in out]


def read_parquet(path: Path) -> list[Record]:
    try:
        rows = pq.read_table(path).to_pylist()
    except pa.ArrowException as exc:
        raise DatasetError(f"{path}: not a readable Parquet file ({exc})") from None
    out = []
    for n, row in enumerate(rows):
        where = f"{path}:row {n}"
        row = {k: v for k, v in row.items() if not (k in ("context", "source", "domain", "split") and v is None)}
        out.append((where, parse_record(row, where, f"import:{path.name}")))
    _check_unique(out)
    return [r for _, r in out]


def _arrow_files(folder: Path) -> list[Path]:
    files = sorted(folder.rglob("*.arrow"))
    if not files:
        raise DatasetError(f"{folder}: no .arrow file: expected a Hugging Face `save_to_disk` folder")
    return files


def read_proxyqa(folder: Path) -> list[Record]:
    """ProxyQA's published form: a `datasets.save_to_disk` folder whose .arrow files are IPC streams
    with `meta_question` (str), `id` (int), `domain` (str), `wiki_cover`, `time_sensitive`.
    Meta-questions only (the official proxy statements are private); they go to the eval split."""
    out = []
    for f in _arrow_files(folder):
        try:
            with pa.ipc.open_stream(f) as reader:
                table = reader.read_all()
        except pa.ArrowInvalid as exc:
            raise DatasetError(f"{f}: not an Arrow IPC stream ({exc})") from None
        missing = {"meta_question", "id", "domain"} - set(table.column_names)
        if missing:
            raise DatasetError(f"{f}: missing field(s) {', '.join(sorted(missing))}")
        for n, row in enumerate(table.to_pylist()):
            where = f"{f}:row {n}"
            if not isinstance(row["id"], int) or isinstance(row["id"], bool):
                _fail(where, "id", f"expected an integer, got {row['id']!r}")
            rec = {"question_id": f"proxyqa-{row['id']}", "text": row["meta_question"],
                   "domain": row["domain"] or "general", "split": "eval", "source": "proxyqa"}
            out.append((where, parse_record(rec, where, "proxyqa")))
    _check_unique(out)
    return [r for _, r in out]


def read_records(path: Path, fmt: str | None = None) -> list[Record]:
    fmt = fmt or ("proxyqa" if path.is_dir() else path.suffix.lstrip(".").lower())
    if fmt == "json":
        fmt = "jsonl"
    readers = {"jsonl": read_jsonl, "parquet": read_parquet, "proxyqa": read_proxyqa}
    if fmt not in readers:
        raise DatasetError(f"{path}: unknown format {fmt!r}; use --format jsonl|parquet|proxyqa")
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    return readers[fmt](path)


def to_frames(records: list[Record]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(meta_questions, proxy_questions) rows for the lake."""
    questions = pl.DataFrame(
        [{"question_id": r.question_id, "text": r.text, "domain": r.domain, "split": r.split,
          "source": r.source, "context": r.context} for r in records],
        schema={"question_id": pl.Utf8, "text": pl.Utf8, "domain": pl.Utf8, "split": pl.Utf8,
                "source": pl.Utf8, "context": pl.Utf8},
    )
    statements = pl.DataFrame(
        [{"question_id": r.question_id, "statement_id": f"{r.question_id}:{i:02d}", "position": i,
          "statement": s, "answer": a, "source": r.source, "weight": r.weights[i - 1] if r.weights else None}
         for r in records for i, (s, a) in enumerate(r.statements, start=1)],
        schema={"question_id": pl.Utf8, "statement_id": pl.Utf8, "position": pl.Int32,
                "statement": pl.Utf8, "answer": pl.Boolean, "source": pl.Utf8, "weight": pl.Float64},
    )
    return questions, statements


def part_name(label: str) -> str:
    """The lake file a source's rows live in, so importing it again replaces them."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-.") or "import"


def store(lake: Lake, records: list[Record], part: str) -> dict[str, int]:
    questions, statements = to_frames(records)
    with lake.transaction() as tx:
        tx.put("meta_questions", questions, name=part)
        tx.put("proxy_questions", statements, name=part)
    return {"meta_questions": questions.height, "proxy_questions": statements.height}


def import_dataset(path: Path, format: Literal["jsonl", "parquet", "proxyqa"] | None = None,
                   lake: str | None = None) -> dict[str, int]:
    """Import meta-questions (and their proxy statements) into the lake; all or nothing.

    Args:
        path: a JSONL or Parquet file in the import format, or a ProxyQA `save_to_disk` folder.
        format: jsonl, parquet or proxyqa; guessed from the path when omitted.
        lake: lake root (default: PROXYREWARD_LAKE or the repository's datalake/).
    """
    path = Path(path)
    records = read_records(path, format)
    counts = store(Lake(lake), records, part_name(f"import-{path.stem}"))
    print(f"imported {counts['meta_questions']} meta-questions and {counts['proxy_questions']} "
          f"proxy statements from {path}")
    return counts


def seed_records(seed_dir: Path = SEED_DIR) -> list[Record]:
    files = sorted(seed_dir.glob("*.jsonl"))
    if not files:
        raise DatasetError(f"{seed_dir}: no seed files")
    records = [r for f in files for r in read_jsonl(f)]
    ids = [r.question_id for r in records]
    dup = next((i for i in ids if ids.count(i) > 1), None)
    if dup:
        raise DatasetError(f"{seed_dir}: question_id {dup!r} appears in two seed files")
    return records


def seed(lake: str | None = None) -> dict[str, int]:
    """Load the bundled dataset (datalake/seed/) into the lake; running it again changes nothing.

    Args:
        lake: lake root (default: PROXYREWARD_LAKE or the repository's datalake/).
    """
    counts = store(Lake(lake), seed_records(), "seed")
    print(f"seeded {counts['meta_questions']} meta-questions and {counts['proxy_questions']} proxy statements")
    return counts


def ensure_seeded(lake: Lake) -> None:
    """Load the seed set when the lake has no meta-questions yet (first command on a fresh lake)."""
    if not lake.files("meta_questions"):
        store(lake, seed_records(), "seed")


def dataset_rows(lake: Lake) -> list[dict]:
    """Meta-questions with their statements nested, in the import format."""
    questions = lake.sql("SELECT * FROM meta_questions ORDER BY question_id").to_dicts()
    statements = lake.sql("SELECT * FROM proxy_questions ORDER BY question_id, position").to_dicts()
    by_q: dict[str, list] = {}
    for s in statements:  # a weight appears only where one was given: an unweighted dataset exports as before
        item = {"statement": s["statement"], "answer": s["answer"]}
        if s.get("weight") is not None:
            item["weight"] = s["weight"]
        by_q.setdefault(s["question_id"], []).append(item)
    return [{**{k: q[k] for k in FIELDS if k in q}, "proxy_questions": by_q.get(q["question_id"], [])}
            for q in questions]


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export(table: str, path: Path, iteration: int | None = None, lake: str | None = None) -> int:
    """Write a table to a file: .parquet, .jsonl or .csv by the path's suffix.

    Args:
        table: a lake table, or `dataset` for meta-questions with nested proxy statements in the
            import format (re-importable).
        path: output file.
        iteration: only this iteration of a partitioned table.
        lake: lake root (default: PROXYREWARD_LAKE or the repository's datalake/).
    """
    path = Path(path)
    lk = Lake(lake)
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".jsonl", ".csv"):
        raise DatasetError(f"{path}: unknown suffix; use .parquet, .jsonl or .csv")
    if table == "dataset":
        rows = dataset_rows(lk)
        if suffix == ".csv":
            raise DatasetError("the dataset export nests statements: use .jsonl or .parquet")
        if suffix == ".jsonl":
            def write(tmp: Path) -> None:
                tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        else:
            def write(tmp: Path) -> None:
                pq.write_table(pa.Table.from_pylist(rows), tmp)
        n = len(rows)
    else:
        frame = lk.read(table, iteration)
        writers = {".parquet": frame.write_parquet, ".jsonl": frame.write_ndjson, ".csv": frame.write_csv}
        def write(tmp: Path) -> None:
            writers[suffix](tmp)
        n = frame.height
    _atomic_write(path, write)
    print(f"wrote {n} rows to {path}")
    return n
