"""The loop on the tiny model: rollouts, evaluation, `iterate` end to end, resume after SIGKILL, the lock,
the report and the notebooks, on a lake the tiny pipeline really produced."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import subprocess
import time

import pytest

from proxyreward_pl.lake import Lake
from tests.helpers import REPO, SMALL, iterate_cmd, run_cli
from tests.servers.fault_proxy import FaultProxy


def table_counts(lake: Lake) -> dict:
    return {(r["table"], r["iteration"]): r["rows"] for r in lake.status().to_dicts()}


def test_iterate_produces_every_table(pipeline_lake):
    lake = Lake(pipeline_lake)
    counts = table_counts(lake)
    for it in (1, 2):
        assert counts[("rollouts", it)] == 6 * 3
        assert counts[("scores", it)] == 6 * 3 * 3  # proxy accuracy, precision, weighted accuracy
        assert counts[("pairs", it)] >= 1
        assert (lake.adapter_dir(it) / "adapter_model.safetensors").exists()
    assert sorted(lake.read("evaluations")["iteration"].unique()) == [0, 1, 2]
    stages = lake.sql("SELECT iteration, stage FROM runs WHERE status = 'finished' ORDER BY ALL").rows()
    assert len(stages) == 1 + 2 * 5
    out = (pipeline_lake / "iterate.out").read_text()
    assert "eval_accuracy" in out and "report:" in out


def expected_pairs(lake: Lake, iteration: int) -> dict[str, tuple[str, str]]:
    """The selection recomputed in Python from scores: per question the best and worst answer by accuracy (ties
    by precision, then sample index), dropped when precision orders them the other way, then the top half by
    variance of the questions left."""
    rows = lake.sql("""SELECT a.question_id, a.rollout_id, a.score, p.score AS precision, r.sample_index
                       FROM scores a JOIN rollouts r USING (iteration, rollout_id)
                       LEFT JOIN scores p ON p.iteration = a.iteration AND p.rollout_id = a.rollout_id
                                         AND p.reward = 'proxy_precision' AND p.status = 'ok'
                       WHERE a.iteration = ? AND a.reward = 'proxy_accuracy' AND a.status = 'ok'""",
                    [iteration]).to_dicts()
    variance = dict(lake.sql("SELECT question_id, var_samp(score) FROM scores WHERE iteration = ? "
                             "AND reward = 'proxy_accuracy' AND status = 'ok' GROUP BY 1", [iteration]).rows())
    by_q: dict[str, list[dict]] = {}
    for r in rows:
        by_q.setdefault(r["question_id"], []).append(r)
    kept = []
    for q, answers in by_q.items():
        scores = [a["score"] for a in answers]
        if len(answers) < 2 or max(scores) == min(scores):
            continue
        best = min(answers, key=lambda a: (-a["score"], -(a["precision"] if a["precision"] is not None else -9),
                                           a["sample_index"]))
        worst = min(answers, key=lambda a: (a["score"], a["precision"] if a["precision"] is not None else 9,
                                            -a["sample_index"]))
        if best["precision"] is not None and worst["precision"] is not None and best["precision"] < worst["precision"]:
            continue
        kept.append((-variance[q], q, best["rollout_id"], worst["rollout_id"]))
    kept.sort()
    return {q: (b, w) for _, q, b, w in kept[: -(-len(kept) // 2)]}


def test_pairs_beat_their_rejected_answer_and_are_the_selection_recomputed(pipeline_lake):
    lake = Lake(pipeline_lake)
    bad = lake.sql("SELECT * FROM pairs WHERE chosen_score <= rejected_score")
    assert bad.is_empty()
    for it in (1, 2):
        got = {r["question_id"]: (r["chosen_rollout_id"], r["rejected_rollout_id"]) for r in lake.read("pairs", it)
               .to_dicts()}
        assert got == expected_pairs(lake, it)
    check = lake.sql("""
        SELECT p.score_variance, v.variance FROM pairs p
        JOIN (SELECT iteration, question_id, var_samp(score) AS variance FROM scores
              WHERE reward = 'proxy_accuracy' AND status = 'ok' GROUP BY ALL) v USING (iteration, question_id)""")
    assert all(abs(a - b) < 1e-12 for a, b in zip(check["score_variance"], check["variance"], strict=True))
    # the chosen/rejected scores are those in `scores`
    mismatch = lake.sql("""SELECT * FROM pairs p JOIN scores s ON s.iteration = p.iteration
                           AND s.rollout_id = p.chosen_rollout_id AND s.reward = 'proxy_accuracy'
                           WHERE s.score != p.chosen_score""")
    assert mismatch.is_empty()


def test_a_rerun_redoes_nothing(pipeline_lake, pipeline_judge):
    before = table_counts(Lake(pipeline_lake))
    proc = subprocess.run(iterate_cmd(pipeline_lake, pipeline_judge, "--report", "false"), cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("done earlier, skipped") == 11
    assert table_counts(Lake(pipeline_lake)) == before


def test_report_and_sql_analyses(pipeline_lake):
    page = (pipeline_lake / "report" / "index.html").read_text()
    assert page.count("<img src=\"data:image/png;base64,") >= 5
    for name in ("scores", "variance", "evaluation", "training", "length_bias"):
        assert (pipeline_lake / "report" / f"{name}.png").stat().st_size > 1000
    for sql in sorted((REPO / "datalake" / "sql" / "analysis").glob("*.sql")):
        out = run_cli("sql", "--file", str(sql), "--format", "csv", lake=pipeline_lake, check=True).stdout
        assert len(out.splitlines()) >= 2, sql.name


def test_notebooks_run_on_the_pipeline_lake(pipeline_lake):
    import nbformat
    from nbclient import NotebookClient

    notebooks = sorted((REPO / "notebooks").glob("*.ipynb"))
    assert len(notebooks) >= 3
    os.environ["PROXYREWARD_LAKE"] = str(pipeline_lake)
    try:
        for path in notebooks:
            nb = nbformat.read(path, as_version=4)
            NotebookClient(nb, timeout=300, kernel_name="python3",
                           resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
            errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                      if o.get("output_type") == "error"]
            assert not errors, (path.name, errors)
    finally:
        del os.environ["PROXYREWARD_LAKE"]


@pytest.mark.slow
def test_sigkill_at_any_point_then_rerun_matches_an_uninterrupted_run(pipeline_lake, pipeline_judge, tmp_path):
    expected = table_counts(Lake(pipeline_lake))
    lake = tmp_path / "lake"
    for delay in (9, 13):  # kill twice, at different stages (each run resumes the last), then let it finish
        proc = subprocess.Popen(iterate_cmd(lake, pipeline_judge, "--report", "false"), cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    proc = subprocess.run(iterate_cmd(lake, pipeline_judge, "--report", "false"), cwd=REPO, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = table_counts(Lake(lake))
    assert {k: v for k, v in got.items() if k[0] != "runs"} == {k: v for k, v in expected.items() if k[0] != "runs"}


@pytest.mark.slow
def test_iterate_with_two_ddp_ranks_then_a_fresh_train_over_its_checkpoints(pipeline_judge, tmp_path):
    """Lightning's launcher re-runs only the training core for rank 1 (not `iterate`, which would stop on its
    own lock); re-training the iteration without --resume starts over on both ranks despite the checkpoints the
    first run left, and gives the same adapter."""
    ranks = ["--iterations", "1", "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu"]
    proc = subprocess.run(iterate_cmd(tmp_path / "lake", pipeline_judge, *ranks), cwd=REPO, capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lake = Lake(tmp_path / "lake")
    weights = lake.adapter_dir(1) / "adapter_model.safetensors"
    first = weights.read_bytes()
    metrics = json.loads(lake.sql("SELECT metrics FROM runs WHERE stage = 'train'").item())
    assert metrics["world_size"] == 2 and metrics["global_step"] >= 1
    assert (lake.root / "runs" / "iteration=1" / "train" / "checkpoints" / "last.ckpt").exists()
    train = ["--config", "configs/tiny.yaml", "--trainer.epochs", "1", "--data.max_length", "256"]  # as SMALL
    run_cli("train", "--iteration", "1", *train, *ranks[2:], lake=lake.root, check=True, timeout=1800)
    import torch
    from safetensors.torch import load

    again, before = load(weights.read_bytes()), load(first)
    for k, v in before.items():
        torch.testing.assert_close(again[k], v, atol=1e-6, rtol=0)


def test_engines_hand_the_accelerator_back_before_training_and_take_it_after(seeded_lake, pipeline_judge):
    from proxyreward_pl.engines import shared_engines
    from proxyreward_pl.iterate import run_loop
    from proxyreward_pl.settings import (
        DataSettings,
        EngineSettings,
        EvalSettings,
        JudgeSettings,
        LoopSettings,
        LoraSettings,
        RolloutSettings,
        TrainerSettings,
        TrainingSettings,
    )

    settings = LoopSettings(
        policy=EngineSettings(engine="hf"),
        judge=JudgeSettings(engine="openai", base_url=pipeline_judge, model="judge", mode="logprob", timeout=10),
        sampling=RolloutSettings(k=3, max_questions=6, max_new_tokens=24), evaluation=EvalSettings(max_new_tokens=24),
        training=TrainingSettings(lora=LoraSettings(r=4, alpha=8), data=DataSettings(max_length=128),
                                  trainer=TrainerSettings(epochs=1, accelerator="cpu", devices=1, loggers=(),
                                                          progress_bar=False)))
    with shared_engines() as pool:
        run_loop(seeded_lake, settings, iterations=1, report=False)
        events = {engine.identity: list(engine.events) for engine in pool.values() if engine.kind == "hf"}
    assert events and all(e == ["load", "hand_back", "load"] for e in events.values()), events
    assert seeded_lake.sql("SELECT count(*) FROM evaluations WHERE iteration = 1").item() > 0


def test_a_failed_training_core_is_a_failed_train_run_with_its_last_lines(seeded_lake):
    from tests.helpers import add_pairs

    add_pairs(seeded_lake, 1)
    proc = run_cli("train", "--iteration", "1", "--config", "configs/tiny.yaml", "--trainer.accelerator", "gpu",
                   lake=seeded_lake.root)
    assert proc.returncode == 1 and "the training core failed" in proc.stderr and "Traceback" not in proc.stderr
    row = seeded_lake.sql("SELECT status, metrics FROM runs WHERE stage = 'train'").row(0)
    assert row[0] == "failed" and "gpu" in json.loads(row[1])["error"].lower()
    assert not seeded_lake.adapter_dir(1).exists()


def test_lake_check_passes_the_lake_a_whole_run_wrote(pipeline_lake):
    """Every partitioned table, the runs, adapters and logs of a 2-iteration run: nothing to report."""
    proc = run_cli("lake", "check", lake=pipeline_lake)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "every file conforms to the contract; nothing unaccounted for" in proc.stdout


def test_a_second_iterate_on_the_same_lake_is_refused(seeded_lake):
    with open(seeded_lake.root / ".iterate.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fh.write("pid 12345")
        fh.flush()
        proc = run_cli("iterate", *SMALL, lake=seeded_lake.root)
    assert proc.returncode == 1 and "another `proxyreward iterate` is running" in proc.stderr


def test_rollout_and_evaluate_stages(seeded_lake):
    common = ["--config", "configs/tiny.yaml", "--policy.engine", "hf"]
    run_cli("rollout", "--iteration", "1", *common, "--sampling.k", "2", "--sampling.max_questions", "2",
            "--sampling.max_new_tokens", "16", lake=seeded_lake.root, check=True)
    rows = seeded_lake.read("rollouts", 1)
    assert rows.height == 4 and set(rows["sample_index"]) == {0, 1}
    assert (rows["n_tokens"] <= 16).all() and set(rows["finish_reason"]) <= {"stop", "length"}
    assert rows["policy"].str.ends_with("+base").all()
    # resumable: the same command again samples nothing
    run_cli("rollout", "--iteration", "1", *common, "--sampling.k", "2", "--sampling.max_questions", "2",
            "--sampling.max_new_tokens", "16", lake=seeded_lake.root, check=True)
    metrics = [json.loads(m) for m in seeded_lake.sql("SELECT metrics FROM runs WHERE stage = 'rollout' "
                                                      "ORDER BY started_at")["metrics"]]
    assert metrics[0]["sent"] == 2 and metrics[1]["sent"] == 0 and metrics[1]["cached"] == 2
    assert seeded_lake.read("rollouts", 1).equals(rows)

    out = run_cli("evaluate", "--iteration", "0", *common, "--judge.engine", "hf", "--judge.mode", "logprob",
                  "--evaluation.max_new_tokens", "16", lake=seeded_lake.root, check=True).stdout
    assert "eval proxy accuracy" in out
    ev = seeded_lake.read("evaluations", 0)
    assert ev.height == 16 * 3 and set(ev["reward"]) == {"proxy_accuracy", "proxy_precision", "proxy_weighted_accuracy"}
    assert ev["score"].is_between(0, 1).all()
    proc = run_cli("rollout", "--iteration", "3", *common, lake=seeded_lake.root)
    assert proc.returncode == 1 and "train iteration 2 first" in proc.stderr


def test_llm_judge_win_rate_against_iteration_zero(pipeline_lake, tmp_path):
    import shutil

    from tests.servers.judge import JudgeServer

    lake = tmp_path / "copy"
    shutil.copytree(pipeline_lake, lake)
    with JudgeServer(rating=6) as server:
        run_cli("evaluate", "--iteration", "2", *SMALL[:4], "--judge.engine", "openai", "--judge.model", "j",
                "--judge.base_url", server.url, "--evaluation.max_new_tokens", "24",
                "--evaluation.llm_judge_win_rate", "true", lake=lake, check=True)
    ev = Lake(lake).read("evaluations", 2)
    wins = ev.filter(ev["reward"] == "llm_judge_win_vs_0")
    assert wins.height == 16 and set(wins["score"]) == {0.5}  # the server rates every answer alike: ties


def test_the_conflict_reward_is_scored_when_it_is_of_another_family():
    from proxyreward_pl.iterate import plan
    from proxyreward_pl.settings import LoopSettings, SelectSettings

    def scored(**selection) -> list[str | None]:
        steps = plan(LoopSettings(selection=SelectSettings(**selection)), 1)
        return [s.reward for s in steps if s.stage == "score"]

    assert scored() == ["proxy"]  # proxy_precision comes with the proxy reward
    assert scored(conflict_reward="llm_judge") == ["proxy", "llm_judge"]
    assert scored(reward="length", conflict_reward="llm_judge") == ["proxy", "length", "llm_judge"]
    assert scored(reward="longreward", conflict_reward="longreward_helpfulness") == ["proxy", "longreward"]
    assert scored(reward="length", conflict_reward=None) == ["proxy", "length"]


@pytest.mark.slow
def test_iterate_with_a_served_policy_loads_each_adapter_at_run_time(vllm_server, tmp_path):
    """Policy and judge on the real vLLM server, no restart: iteration 2 samples with iteration 1's adapter,
    loaded at run time under a name carrying its weights' hash, which the rows record; iteration 1's adapter is
    unloaded once iteration 2's takes over, and iteration 2's when the run ends."""
    root = tmp_path / "lake"
    pid = vllm_server.proc.pid
    served = ["--policy.engine", "openai", "--policy.model", "tiny-served", "--policy.server", "vllm",
              "--policy.per_request_seed", "false", "--judge.engine", "openai", "--judge.base_url", vllm_server.url,
              "--judge.model", "tiny-served", "--judge.server", "vllm", "--judge.mode", "generate",
              "--judge.max_tokens", "256", "--judge.per_request_seed", "false", "--judge.timeout", "300"]
    with FaultProxy(vllm_server.url) as proxy:  # in front of the policy's server, to see what it was asked
        proc = subprocess.run(iterate_cmd(root, vllm_server.url, *served, "--policy.base_url", proxy.url), cwd=REPO,
                              capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lake = Lake(root)
    digest = {n: hashlib.sha256((lake.adapter_dir(n) / "adapter_model.safetensors").read_bytes()).hexdigest()[:12]
              for n in (1, 2)}
    name = {n: f"iteration-{n}-{digest[n]}" for n in (1, 2)}
    policies = dict(lake.sql("SELECT iteration, any_value(policy) FROM rollouts GROUP BY 1").rows())
    assert policies == {1: "tiny-served+base", 2: f"tiny-served+adapter:{digest[1]}"}
    evaluated = dict(lake.sql("SELECT iteration, any_value(policy) FROM evaluations GROUP BY 1").rows())
    assert evaluated == {0: "tiny-served+base", 1: f"tiny-served+adapter:{digest[1]}",
                         2: f"tiny-served+adapter:{digest[2]}"}

    def calls(route: str) -> list[dict]:
        return [e["body"] for e in proxy.log if e["path"].endswith(route)]

    assert calls("/load_lora_adapter") == [{"lora_name": name[n], "lora_path": str(lake.adapter_dir(n))}
                                           for n in (1, 2)]
    assert calls("/unload_lora_adapter") == [{"lora_name": name[1]}, {"lora_name": name[2]}]
    asked = [e["model"] for e in proxy.completions()]
    assert asked.count(name[1]) == 16 + 6  # iteration 1's eval answers, then iteration 2's rollouts
    assert asked.count(name[2]) == 16 and asked.count("tiny-served") == 16 + 6
    assert vllm_server.proc.pid == pid and vllm_server.proc.poll() is None  # never restarted
    assert [m["id"] for m in vllm_server.models()] == ["tiny-served"]
