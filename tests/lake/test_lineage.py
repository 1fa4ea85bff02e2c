"""Lineage: every stage run knows what it was made from; a change upstream makes what follows stale, `iterate`
redoes it, a single stage refuses to build on it; a corrupt file is named, not a traceback."""

from __future__ import annotations

import json
import math
import shutil
import subprocess

import pytest

from proxyreward_pl.identity import adapter_identity
from proxyreward_pl.lake import Lake
from proxyreward_pl.lake.lineage import lineage_table
from tests.helpers import REPO, add_rollouts, iterate_cmd, run_cli
from tests.servers.judge import JudgeServer

TRAIN = ["--config", "configs/tiny.yaml", "--trainer.epochs", "1", "--data.max_length", "256"]  # as SMALL


def stale(lake: Lake) -> set[tuple]:
    return {(r["iteration"], r["stage"], r["reward"]) for r in lineage_table(lake).to_dicts() if not r["current"]}


@pytest.mark.slow
def test_a_retrained_iteration_makes_the_next_one_stale_and_iterate_redoes_it(pipeline_lake, pipeline_judge,
                                                                             tmp_path):
    root = tmp_path / "lake"
    shutil.copytree(pipeline_lake, root)
    lake = Lake(root)
    assert stale(lake) == set()
    old_adapter = adapter_identity(str(lake.adapter_dir(1)))
    run_cli("train", "--iteration", "1", *TRAIN, "--trainer.seed", "7", "--optim.lr", "0.001", lake=root,
            check=True)
    assert adapter_identity(str(lake.adapter_dir(1))) != old_adapter
    assert stale(lake) == {(1, "evaluate", None), (2, "rollout", None), (2, "score", "proxy"), (2, "select", None),
                           (2, "train", None), (2, "evaluate", None)}
    proc = run_cli("train", "--iteration", "2", *TRAIN, lake=root)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "iteration 2 rollout is stale" in proc.stderr and "proxyreward rollout --iteration 2" in proc.stderr
    runs_before = lake.sql("SELECT count(*) FROM runs").item()
    out = subprocess.run(iterate_cmd(root, pipeline_judge), cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    redone = [line for line in out.stdout.splitlines() if "redoing it" in line]
    assert [line.split(":")[0] for line in redone] == [
        "[iterate] iteration 1 evaluate", "[iterate] iteration 2 rollout", "[iterate] iteration 2 score proxy",
        "[iterate] iteration 2 select", "[iterate] iteration 2 train", "[iterate] iteration 2 evaluate"]
    assert stale(lake) == set() and lake.sql("SELECT count(*) FROM runs").item() == runs_before + 6
    # iteration 2's reference is the new adapter: stored log-probs name it, and the first step's loss is ln 2
    refs = lake.read("pairs", 2)
    assert set(refs["ref_adapter"]) == {adapter_identity(str(lake.adapter_dir(1)))}
    log = (root / "runs" / "iteration=2" / "train" / "logs" / "metrics.csv").read_text().splitlines()
    header = log[0].split(",")
    first = next(float(r.split(",")[header.index("loss")]) for r in log[1:] if r.split(",")[header.index("loss")])
    assert first == pytest.approx(math.log(2), abs=1e-4)


def test_an_edited_prompt_template_makes_that_rewards_scores_stale_only(seeded_lake, tmp_path):
    prompts = tmp_path / "prompts"
    shutil.copytree(REPO / "prompts", prompts)
    add_rollouts(seeded_lake, 1, n_questions=3, k=2)
    env = {"PROXYREWARD_PROMPTS": str(prompts)}
    with JudgeServer() as server:
        for reward in ("proxy", "length"):
            run_cli("score", "--iteration", "1", "--reward", reward, "--judge.engine", "openai",
                    "--judge.base_url", server.url, "--judge.model", "perfect", lake=seeded_lake.root, env=env,
                    check=True)
    assert stale(seeded_lake) == set()
    template = prompts / "proxy_judge.j2"
    template.write_text(template.read_text() + "\nBe strict.\n")
    proc = run_cli("lake", "lineage", "--format", "json", lake=seeded_lake.root, env=env, check=True)
    rows = {r["reward"]: r for r in map(json.loads, proc.stdout.splitlines()) if r["stage"] == "score"}
    assert not rows["proxy"]["current"] and rows["proxy"]["why"].startswith("its input prompts changed")
    assert rows["length"]["current"]
    assert stale(seeded_lake) == set()  # the repository's templates did not change


def test_a_corrupt_parquet_file_is_named_by_check_and_by_any_query(seeded_lake):
    add_rollouts(seeded_lake, 1, n_questions=3, k=2)
    victim = seeded_lake.files("rollouts", 1)[0]
    data = victim.read_bytes()
    victim.write_bytes(data[:4] + b"\xff" * (len(data) - 200) + data[-196:])  # every page broken, the footer kept
    before = {f: f.read_bytes() for f in seeded_lake.root.rglob("*.parquet") if f != victim}
    proc = run_cli("lake", "check", lake=seeded_lake.root)
    assert proc.returncode == 1 and str(victim) in proc.stdout and "unreadable Parquet" in proc.stdout
    proc = run_cli("sql", "SELECT * FROM rollouts", lake=seeded_lake.root)
    assert proc.returncode == 1 and str(victim) in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("lake", "status", lake=seeded_lake.root)
    assert proc.returncode == 1 and str(victim) in proc.stderr
    assert {f: f.read_bytes() for f in seeded_lake.root.rglob("*.parquet") if f != victim} == before


def test_check_finds_policies_without_runs_and_passes_a_sound_lake(seeded_lake):
    assert run_cli("lake", "check", lake=seeded_lake.root).returncode == 0
    stray = seeded_lake.adapter_dir(3)
    stray.mkdir(parents=True)
    (stray / "adapter_config.json").write_text(json.dumps({}))
    proc = run_cli("lake", "check", lake=seeded_lake.root)
    assert proc.returncode == 1 and f"{stray}: no finished train run published it" in proc.stdout


def test_lineage_knows_every_template_a_reward_is_judged_with():
    from proxyreward_pl.lake.lineage import REWARD_TEMPLATES
    from proxyreward_pl.longreward_judging import TEMPLATES

    assert set(REWARD_TEMPLATES["longreward"]) == {t for names in TEMPLATES.values() for t in names}
