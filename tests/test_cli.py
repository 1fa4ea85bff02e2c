"""The command line: a coherent --help, SQL with DuckDB's own error messages, lake status."""

from __future__ import annotations

import json

import pytest

from proxyreward_pl.__main__ import COMMANDS
from tests.helpers import run_cli


def test_help_lists_every_command():
    proc = run_cli("--help", check=True)
    for name in COMMANDS:
        assert name in proc.stdout
    for path in (["import"], ["export"], ["sql"], ["lake", "status"], ["tiny-model"], ["seed"]):
        sub = run_cli(*path, "--help", check=True)
        assert "--config" in sub.stdout
        assert ("--lake" in sub.stdout) == (path != ["tiny-model"])  # every command that touches the lake


def test_python_dash_m_and_console_script_agree(seeded_lake):
    import shutil
    import subprocess

    script = shutil.which("proxyreward") or str(__import__("sys").executable).replace("python", "proxyreward")
    out = subprocess.run([script, "sql", "select count(*) as n from meta_questions", "--format", "json",
                          "--lake", str(seeded_lake.root)], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == {"n": 64}


def test_sql_formats_and_out_file(seeded_lake, tmp_path):
    q = "select domain, count(*) as n from meta_questions group by 1 order by 1"
    table = run_cli("sql", q, lake=seeded_lake.root, check=True).stdout
    assert "science" in table and "│" in table
    csv = run_cli("sql", q, "--format", "csv", lake=seeded_lake.root, check=True).stdout
    assert csv.splitlines()[0] == "domain,n" and len(csv.splitlines()) == 9
    out = tmp_path / "r.json"
    run_cli("sql", q, "--format", "json", "--out", str(out), lake=seeded_lake.root, check=True)
    assert len(out.read_text().splitlines()) == 8


def test_sql_file(seeded_lake, tmp_path):
    f = tmp_path / "q.sql"
    f.write_text("-- how many eval questions\nSELECT count(*) AS n FROM meta_questions WHERE split = 'eval'\n")
    out = run_cli("sql", "--file", str(f), "--format", "csv", lake=seeded_lake.root, check=True).stdout
    assert out.split() == ["n", "16"]


def test_sql_error_prints_duckdb_message_not_a_traceback(seeded_lake):
    proc = run_cli("sql", "select nope from meta_questions", lake=seeded_lake.root)
    assert proc.returncode == 1
    assert "Binder Error" in proc.stderr and "nope" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_lake_status_counts_rows(seeded_lake):
    out = run_cli("lake", "status", lake=seeded_lake.root, check=True).stdout
    rows = {line.split("┆")[0].strip("│ "): line for line in out.splitlines() if "┆" in line}
    assert "64" in rows["meta_questions"] and "1000" in rows["proxy_questions"]


def test_lake_from_environment(seeded_lake):
    proc = run_cli("sql", "select count(*) as n from meta_questions", "--format", "csv",
                   env={"PROXYREWARD_LAKE": str(seeded_lake.root)}, check=True)
    assert proc.stdout.split() == ["n", "64"]


def test_analysis_dataset_balance(seeded_lake):
    frame = seeded_lake.run_sql_file("analysis/dataset_balance.sql")
    assert frame.height == 16  # 8 domains x (train, eval)
    assert frame["questions"].sum() == 64 and frame["statements"].sum() == 1000
    assert frame["false_share"].min() >= 0.2 and frame["false_share"].max() <= 0.35


def _lake_commands():
    import inspect

    from tests.test_configs import _commands

    for path, fn, positional in _commands():
        params = inspect.signature(fn).parameters
        if "lake" in params:
            required = [p for p in params if params[p].default is inspect.Parameter.empty]
            args = [a for p in required for a in (["x"] if p in positional else [f"--{p}", "1"])]
            yield pytest.param(list(path), args, id=" ".join(path))


@pytest.mark.parametrize("path, required", list(_lake_commands()))
@pytest.mark.parametrize("order", ["flag first", "config first"])
def test_a_lake_flag_beats_a_config_file_in_any_order(path, required, order, tmp_path):
    from proxyreward_pl.__main__ import parse

    lake, config = ["--lake", str(tmp_path / "x")], ["--config", "configs/tiny.yaml"]
    argv = path + required + (lake + config if order == "flag first" else config + lake)
    _, args = parse(argv)
    assert args["lake"] == str(tmp_path / "x")


def test_flags_beat_configs_for_every_option_and_later_configs_beat_earlier(tmp_path):
    from proxyreward_pl.__main__ import parse

    other = tmp_path / "other.yaml"
    other.write_text("sampling:\n  k: 3\njudge:\n  mode: generate\n")
    _, args = parse(["rollout", "--iteration", "1", "--sampling.k", "5", "--config", "configs/tiny.yaml"])
    assert args["sampling"].k == 5 and args["sampling"].max_new_tokens == 96  # the rest from the file
    _, args = parse(["score", "--iteration", "1", "--config", "configs/tiny.yaml", "--config", str(other)])
    assert args["judge"].mode == "generate" and args["judge"].model == "tiny"


def test_the_command_uses_the_flag_lake_not_the_config_lake(seeded_lake):
    proc = run_cli("sql", "select count(*) as n from meta_questions", "--format", "csv", "--lake",
                   str(seeded_lake.root), "--config", "configs/tiny.yaml", check=True)
    assert proc.stdout.split() == ["n", "64"]


@pytest.mark.parametrize("flag, value, message", [
    ("--selection.top_fraction", "1.5", "--selection.top_fraction: must be in (0, 1], got 1.5"),
    ("--selection.top_k", "0", "--selection.top_k: must be >= 1, got 0"),
])
def test_a_bad_setting_names_its_option_and_leaves_the_lake_alone(seeded_lake, flag, value, message):
    before = seeded_lake.status().to_dicts()
    proc = run_cli("select", "--iteration", "1", flag, value, lake=seeded_lake.root)
    assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr
    assert seeded_lake.status().to_dicts() == before
