"""`proxyreward train`: pairs from the lake, reference log-probs persisted into `pairs`, adapter and runs row."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from proxyreward_pl.identity import adapter_identity
from tests.helpers import REPO, add_pairs, run_cli

FAST = ["--config", "configs/tiny.yaml", "--trainer.epochs", "1", "--data.max_length", "128",
        "--lora.r", "4", "--lora.alpha", "8"]


def test_train_stage_persists_references_and_records_the_run(seeded_lake):
    add_pairs(seeded_lake, 1)
    proc = run_cli("train", "--iteration", "1", *FAST, lake=seeded_lake.root, check=True)
    assert "iteration 1: trained on 8 pairs" in proc.stdout
    adapter = seeded_lake.root / "adapters" / "iteration=1"
    assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()
    pairs = seeded_lake.read("pairs", 1)
    assert pairs["ref_chosen_logp"].null_count() == 0 and (pairs["ref_chosen_logp"] < 0).all()
    assert pairs["ref_tokenization"].n_unique() == 1 and pairs["ref_adapter"].to_list() == [""] * 8
    run = seeded_lake.sql("SELECT * FROM runs WHERE stage = 'train'").to_dicts()
    assert len(run) == 1 and run[0]["status"] == "finished"
    metrics = json.loads(run[0]["metrics"])
    assert metrics["reference_computed"] == 8 and metrics["adapter"].endswith("iteration=1")
    assert json.loads(run[0]["config"])["lora"]["r"] == 4

    # a re-run reuses the stored reference log-probs
    before = pairs.select("question_id", "ref_chosen_logp").sort("question_id")
    run_cli("train", "--iteration", "1", *FAST, lake=seeded_lake.root, check=True)
    runs = seeded_lake.sql("SELECT metrics FROM runs WHERE stage = 'train' ORDER BY finished_at").to_dicts()
    assert json.loads(runs[-1]["metrics"])["reference_computed"] == 0
    after = seeded_lake.read("pairs", 1).select("question_id", "ref_chosen_logp").sort("question_id")
    assert after.equals(before)


def test_iteration_two_starts_from_iteration_one(seeded_lake):
    add_pairs(seeded_lake, 1)
    add_pairs(seeded_lake, 2)
    proc = run_cli("train", "--iteration", "2", *FAST, lake=seeded_lake.root)
    assert proc.returncode == 1 and "train iteration 1 first" in proc.stderr
    run_cli("train", "--iteration", "1", *FAST, lake=seeded_lake.root, check=True)
    run_cli("train", "--iteration", "2", *FAST, lake=seeded_lake.root, check=True)
    refs = seeded_lake.read("pairs", 2)["ref_adapter"].unique().to_list()
    assert refs == [adapter_identity(str(seeded_lake.adapter_dir(1)))]  # reference = the rollout policy


def test_train_without_pairs_is_a_clear_error(seeded_lake):
    proc = run_cli("train", "--iteration", "3", *FAST, lake=seeded_lake.root)
    assert proc.returncode == 1
    assert "no pairs for iteration 3" in proc.stderr and "Traceback" not in proc.stderr
    assert seeded_lake.read("runs").is_empty()


def test_pairs_naming_missing_rollouts_are_refused(seeded_lake):
    add_pairs(seeded_lake, 1)
    seeded_lake.write("rollouts", seeded_lake.read("rollouts", 1).filter(pl.col("sample_index") == 0), iteration=1)
    proc = run_cli("train", "--iteration", "1", *FAST, lake=seeded_lake.root)
    assert proc.returncode == 1 and "8 name rollouts" in proc.stderr


@pytest.mark.parametrize("flag", ["--dpo.loss_type", "--trainer.strategy"])
def test_bad_settings_are_refused_by_the_parser(seeded_lake, flag):
    proc = run_cli("train", "--iteration", "1", flag, "nonsense", lake=seeded_lake.root)
    assert proc.returncode == 2 and flag.lstrip("-") in proc.stderr


def test_prepare_only_then_the_core_then_publish_only(seeded_lake):
    """The multi-node recipe: prepare the pairs file, launch the training core yourself, publish its result."""
    add_pairs(seeded_lake, 1)
    proc = run_cli("train", "--iteration", "1", *FAST, "--prepare_only", "true", lake=seeded_lake.root, check=True)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("pairs with reference log-probs: "))
    pairs_file = Path(line.split(": ", 1)[1])
    assert seeded_lake.read("pairs", 1)["ref_chosen_logp"].null_count() == 0
    assert not seeded_lake.adapter_dir(1).exists()
    model_path = json.loads(seeded_lake.sql("SELECT config FROM runs").item())["model"]["path"]
    subprocess.run([sys.executable, "-m", "proxyreward_pl.training", str(pairs_file), str(pairs_file.parent),
                    "--config", "configs/tiny.yaml", "--model.path", model_path,
                    "--trainer.max_steps", "1", "--data.max_length", "128", "--lora.r", "4"],
                   check=True, timeout=600, cwd=REPO)
    assert json.loads((pairs_file.parent / "reference.json").read_text())["computed"] == 0  # stored by prepare
    run_cli("train", "--iteration", "1", *FAST, "--publish_only", "true", lake=seeded_lake.root, check=True)
    assert (seeded_lake.adapter_dir(1) / "adapter_config.json").exists()
    run = seeded_lake.sql("SELECT metrics FROM runs WHERE status = 'finished' ORDER BY finished_at DESC").item(0, 0)
    assert json.loads(run)["global_step"] == 1


def test_full_fine_tuning_publishes_a_model_that_is_the_next_policy(seeded_lake):
    from proxyreward_pl.asking import policy_of
    from proxyreward_pl.settings import EngineSettings

    add_pairs(seeded_lake, 1)
    run_cli("train", "--iteration", "1", *FAST, "--lora.enabled", "false", lake=seeded_lake.root, check=True)
    assert (seeded_lake.model_dir(1) / "config.json").exists() and not seeded_lake.adapter_dir(1).exists()
    policy = policy_of(seeded_lake, 1, EngineSettings(engine="hf", model="base"))
    assert policy.engine.model == str(seeded_lake.model_dir(1)) and policy.adapter is None
    assert policy.name.startswith("base+full:")
