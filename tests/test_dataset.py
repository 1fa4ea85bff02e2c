"""The bundled seed set, and import/export: all or nothing, errors naming file, line and field."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from proxyreward_pl.dataset import DatasetError, read_records, seed_records
from tests.helpers import run_cli


# -- the seed set ----------------------------------------------------------------------------------
def test_seed_counts_domains_and_splits():
    records = seed_records()
    assert len(records) >= 60
    domains = Counter(r.domain for r in records)
    assert len(domains) >= 8 and min(domains.values()) >= 6
    assert sum(r.split == "eval" for r in records) >= 12
    assert sum(len(r.statements) for r in records) >= 700
    for domain in domains:
        assert any(r.split == "eval" and r.domain == domain for r in records), domain


def test_seed_statements_are_balanced_and_unique():
    records = seed_records()
    for r in records:
        n = len(r.statements)
        false = sum(not a for _, a in r.statements)
        assert 12 <= n <= 18, (r.question_id, n)
        assert 0.20 <= false / n <= 0.35, (r.question_id, false, n)
    norm = lambda s: re.sub(r"\W+", " ", s.lower()).strip()  # noqa: E731
    texts = Counter(norm(r.text) for r in records)
    assert max(texts.values()) == 1
    statements = Counter(norm(s) for r in records for s, _ in r.statements)
    assert max(statements.values()) == 1, statements.most_common(1)


def test_seed_has_nothing_time_sensitive():
    pattern = re.compile(r"\b(currently|nowadays|today|latest|as of|this year)\b", re.I)
    for r in seed_records():
        assert not pattern.search(r.text), r.question_id


def test_seed_is_idempotent(lake):
    for _ in range(2):
        proc = run_cli("seed", lake=lake.root, check=True)
    assert "64 meta-questions" in proc.stdout or "meta-questions" in proc.stdout
    assert lake.sql("SELECT count(*) FROM meta_questions").item() == len(seed_records())
    assert lake.sql("SELECT count(*) FROM proxy_questions").item() == sum(len(r.statements) for r in seed_records())


def test_seed_then_sql_counts_proxy_questions(lake):
    run_cli("seed", lake=lake.root, check=True)
    proc = run_cli("sql", "select count(*) as n from proxy_questions", "--format", "csv", lake=lake.root, check=True)
    assert int(proc.stdout.split()[-1]) >= 700


# -- import ------------------------------------------------------------------------------------------
GOOD = [
    {"question_id": "a1", "text": "Explain tides.", "domain": "science", "split": "train",
     "proxy_questions": [{"statement": "The Moon's gravity drives tides.", "answer": True},
                         {"statement": "Tides happen once a week.", "answer": False}]},
    {"question_id": "a2", "text": "Describe the water cycle.", "context": "Water evaporates...",
     "proxy_questions": [{"statement": "Evaporation moves water into the air.", "answer": True}]},
    {"question_id": "a3", "text": "What caused the Dust Bowl?", "split": "eval"},
]


def write_jsonl(path: Path, rows: list, raw_lines: dict[int, str] | None = None) -> Path:
    lines = [json.dumps(r) for r in rows]
    for i, text in (raw_lines or {}).items():
        lines.insert(i, text)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_import_jsonl_and_reimport_replaces(lake, tmp_path):
    f = write_jsonl(tmp_path / "mine.jsonl", GOOD)
    for _ in range(2):
        run_cli("import", str(f), lake=lake.root, check=True)
    q = lake.sql("SELECT question_id, domain, split, source, context FROM meta_questions ORDER BY 1").rows()
    assert q == [("a1", "science", "train", "import:mine.jsonl", None),
                 ("a2", "general", "train", "import:mine.jsonl", "Water evaporates..."),
                 ("a3", "general", "eval", "import:mine.jsonl", None)]
    s = lake.sql("SELECT statement_id, position, answer FROM proxy_questions ORDER BY 1").rows()
    assert s == [("a1:01", 1, True), ("a1:02", 2, False), ("a2:01", 1, True)]


def _status(lake) -> str:
    return run_cli("lake", "status", lake=lake.root, check=True).stdout


BAD = [
    ({2: '{"question_id": "b", "text": '}, ":3: record: malformed JSON"),
    ({1: json.dumps({"text": "no id"})}, ":2: question_id: missing"),
    ({1: json.dumps({"question_id": 7, "text": "x"})}, ":2: question_id: expected a string, got int"),
    ({1: json.dumps({"question_id": "a1", "text": "again"})}, ":2: question_id: duplicate id 'a1' (first at"),
    ({3: json.dumps({"question_id": "e", "text": "   "})}, ":4: text: empty"),
    ({1: json.dumps({"question_id": "s", "text": "t", "split": "test"})}, ":2: split: expected 'train' or 'eval'"),
    ({1: json.dumps({"question_id": "p", "text": "t", "proxy_questions": [{"statement": "x", "answer": "yes"}]})},
     ":2: proxy_questions[0].answer: expected true or false"),
    ({1: json.dumps({"question_id": "u", "text": "t", "proxy_question": []})}, ":2: proxy_question: unknown field"),
    ({1: json.dumps({"question_id": "w", "text": "t", "proxy_questions": [
        {"statement": "x", "answer": True}, {"statement": "y", "answer": False, "weight": 0}]})},
     ":2: proxy_questions[1].weight: expected a number > 0, got 0"),
    ({1: json.dumps({"question_id": "w", "text": "t", "proxy_questions": [
        {"statement": "x", "answer": True, "weight": "heavy"}]})},
     ":2: proxy_questions[0].weight: expected a number > 0, got 'heavy'"),
]


@pytest.mark.parametrize("raw, message", BAD)
def test_bad_jsonl_names_line_and_field_and_writes_nothing(seeded_lake, tmp_path, raw, message):
    f = write_jsonl(tmp_path / "bad.jsonl", GOOD, raw)
    before = _status(seeded_lake)
    proc = run_cli("import", str(f), lake=seeded_lake.root)
    assert proc.returncode != 0
    assert f"bad.jsonl{message}" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert _status(seeded_lake) == before


def test_import_colliding_with_existing_ids_writes_nothing(seeded_lake, tmp_path):
    f = write_jsonl(tmp_path / "clash.jsonl", [{"question_id": "science-01", "text": "dup"}, GOOD[0]])
    before = _status(seeded_lake)
    proc = run_cli("import", str(f), lake=seeded_lake.root)
    assert proc.returncode == 1 and "duplicate key (question_id='science-01')" in proc.stderr
    assert _status(seeded_lake) == before


def test_import_parquet(lake, tmp_path):
    rows = [{**r, "proxy_questions": r.get("proxy_questions", [])} for r in GOOD]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "mine.parquet")
    run_cli("import", str(tmp_path / "mine.parquet"), lake=lake.root, check=True)
    assert lake.sql("SELECT count(*) FROM proxy_questions").item() == 3
    bad = [dict(rows[0]), {**rows[1], "text": None}]
    pq.write_table(pa.Table.from_pylist(bad), tmp_path / "bad.parquet")
    with pytest.raises(DatasetError, match=r"bad\.parquet:row 1: text: missing"):
        read_records(tmp_path / "bad.parquet")


def proxyqa_folder(path: Path, n: int = 100) -> Path:
    """A ProxyQA-form folder written by Hugging Face `datasets` itself (save_to_disk)."""
    import datasets

    ds = datasets.Dataset.from_dict({
        "meta_question": [f"Write a detailed report on topic {i}." for i in range(n)],
        "id": list(range(n)),
        "domain": [["history", "science", "economics"][i % 3] for i in range(n)],
        "wiki_cover": [i % 2 == 0 for i in range(n)],
        "time_sensitive": [i % 5 == 0 for i in range(n)],
    })
    ds.save_to_disk(str(path))
    return path


def test_import_proxyqa_folder(lake, tmp_path):
    folder = proxyqa_folder(tmp_path / "proxyqa")
    with open(next(folder.glob("*.arrow")), "rb") as fh:  # really an IPC stream, as published
        assert pa.ipc.open_stream(fh).read_all().num_rows == 100
    proc = run_cli("import", str(folder), "--format", "proxyqa", lake=lake.root, check=True)
    assert "imported 100 meta-questions" in proc.stdout
    got = lake.sql("SELECT count(*), min(split), max(split), count(DISTINCT domain) FROM meta_questions").row(0)
    assert got == (100, "eval", "eval", 3)
    assert lake.sql("SELECT count(*) FROM proxy_questions").item() == 0


def test_export_dataset_roundtrips_through_import(seeded_lake, tmp_path):
    for suffix in ("jsonl", "parquet"):
        out = tmp_path / f"dataset.{suffix}"
        run_cli("export", "dataset", str(out), lake=seeded_lake.root, check=True)
        other = tmp_path / f"other-{suffix}"
        run_cli("import", str(out), lake=other, check=True)
        for table in ("meta_questions", "proxy_questions"):
            cols = "question_id, statement, answer" if table == "proxy_questions" else "question_id, text, split"
            q = f"SELECT {cols} FROM {table} ORDER BY ALL"
            from proxyreward_pl.lake import Lake

            assert Lake(other).sql(q).rows() == seeded_lake.sql(q).rows()


def test_export_table_csv(seeded_lake, tmp_path):
    out = tmp_path / "mq.csv"
    run_cli("export", "meta_questions", str(out), lake=seeded_lake.root, check=True)
    assert out.read_text().splitlines()[0].startswith("question_id,text,domain,split")
    assert len(out.read_text().splitlines()) == 65


WEIGHTED = [
    {"question_id": "w1", "text": "Explain tides.", "proxy_questions": [
        {"statement": "The Moon's gravity drives tides.", "answer": True, "weight": 3},
        {"statement": "Tides happen once a week.", "answer": False},
        {"statement": "The Sun also pulls on the oceans.", "answer": True, "weight": 0.5}]},
    {"question_id": "w2", "text": "Describe the water cycle.", "proxy_questions": [
        {"statement": "Evaporation moves water into the air.", "answer": True}]},
]


def test_statement_weights_import_and_export(lake, tmp_path):
    f = write_jsonl(tmp_path / "weighted.jsonl", WEIGHTED)
    run_cli("import", str(f), lake=lake.root, check=True)
    got = lake.sql("SELECT statement_id, weight FROM proxy_questions ORDER BY 1").rows()
    # a question with a weight anywhere gets 1 where none is given; one without any stays NULL (counts as 1)
    assert got == [("w1:01", 3.0), ("w1:02", 1.0), ("w1:03", 0.5), ("w2:01", None)]
    for suffix in ("jsonl", "parquet"):
        out = tmp_path / f"export.{suffix}"
        run_cli("export", "dataset", str(out), lake=lake.root, check=True)
        again = tmp_path / f"again-{suffix}"
        run_cli("import", str(out), lake=again, check=True)
        from proxyreward_pl.lake import Lake

        assert Lake(again).sql("SELECT statement_id, weight FROM proxy_questions ORDER BY 1").rows() == got
    exported = [json.loads(line) for line in (tmp_path / "export.jsonl").read_text().splitlines()]
    assert [s.get("weight") for s in exported[0]["proxy_questions"]] == [3.0, 1.0, 0.5]
    assert "weight" not in exported[1]["proxy_questions"][0], "an unweighted dataset exports as before"
