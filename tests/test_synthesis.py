"""`proxyreward dataset generate|proxyqa|stats` against a real local generator server, and vLLM on CPU."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time

import pytest

from proxyreward_pl.lake import Lake
from proxyreward_pl.rewards import ParseError
from proxyreward_pl.settings import EngineSettings, GenerationSettings
from proxyreward_pl.synthesis import generate, parse_questions, parse_statements, parse_verdict
from tests.helpers import REPO, run_cli
from tests.servers.generator import PLANTED, GeneratorServer

SCRIPT = {
    ("alpha", 1): ["Explain the unbalanced alpha phenomenon in depth with its causes and effects?",
                   "Explain the unbalanced alpha phenomenon in depth with its causes and effects?",  # exact dup
                   "Explain the unbalanced alpha phenomenon in depth with its causes and its effects?"],  # near dup
    ("alpha", 2): ["Describe what is happening currently in alpha research and why it matters?",  # time-sensitive
                   "Describe the echo alpha mechanism and how it shaped modern alpha practice?",
                   "Describe the full history of alpha studies from the start to the present day?"],  # over quota
    ("beta", 1): ["Explain the garbled beta process in detail with its main stages?",
                  "Explain the short beta method and its applications across many fields?",
                  "Too short?"],  # question length
}
EXPECTED = {"questions_generated": 9, "duplicate_question": 1, "near_duplicate_question": 1,
            "time_sensitive_question": 1, "questions_over_quota": 1, "question_length": 1,
            "statements_generated": 12 + 12 + 12 + 5, "statements_repeating_question": 1,
            "unbalanced_questions": 1, "too_few_statements": 1, "questions_kept": 2, "statements_kept": 23}


def gen_settings(url: str, **kw) -> EngineSettings:
    return EngineSettings(engine="openai", model="writer", base_url=url, timeout=kw.pop("timeout", 5.0),
                          retry_initial=0.01, retry_max=0.05, **kw)


def run_generate(lake: Lake, url: str, **kw) -> dict:
    return generate(n=4, domains="alpha,beta", per_question=12, split_eval=0.5, generator=gen_settings(url, **kw),
                    generation=GenerationSettings(questions_per_request=3, max_requests_per_domain=3),
                    lake=str(lake.root))


def test_parsers():
    assert parse_questions("Q: One?\nnoise\nQ: Two?") == ["One?", "Two?"]
    assert parse_questions('{"questions": ["A?", " "]}') == ["A?"]
    assert parse_statements("- True: x is y\n- false: z is w") == [("x is y", True, None), ("z is w", False, None)]
    assert parse_statements("- True [3]: x is y\n- False [1]: z") == [("x is y", True, 3), ("z", False, 1)]
    assert parse_statements('{"statements": [{"statement": "x", "answer": true, "importance": 2}]}') == [
        ("x", True, 2)]
    with pytest.raises(ParseError):
        parse_statements('{"statements": [{"statement": "x", "answer": "yes"}]}')
    with pytest.raises(ParseError, match="importance"):
        parse_statements('{"statements": [{"statement": "x", "answer": true, "importance": true}]}')
    with pytest.raises(ParseError):
        parse_questions("nothing here")
    assert parse_verdict('{"answer": false}') is False and parse_verdict("True.") is True
    with pytest.raises(ParseError):
        parse_verdict("Perhaps")


@pytest.mark.parametrize("faults", [0.0, 0.3])
def test_summary_counts_match_what_was_injected(seeded_lake, faults):
    before = seeded_lake.read("meta_questions").height
    with GeneratorServer(script=SCRIPT, fault_rate=faults, faults=("500", "429", "slow", "drop"),
                         slow_seconds=1.5, seed=1) as server:
        metrics = run_generate(seeded_lake, server.url, timeout=1.0)
    summary = metrics["summary"]
    assert {k: summary.get(k, 0) for k in EXPECTED} == EXPECTED
    q = seeded_lake.sql("SELECT * FROM meta_questions WHERE source LIKE 'generated:%' ORDER BY text").to_dicts()
    assert [r["text"] for r in q] == ["Describe the echo alpha mechanism and how it shaped modern alpha practice?",
                                      "Explain the garbled beta process in detail with its main stages?"]
    assert [r["domain"] for r in q] == ["alpha", "beta"] and all(r["question_id"].startswith("gen-") for r in q)
    assert seeded_lake.read("meta_questions").height == before + 2
    s = seeded_lake.sql("SELECT question_id, count(*) n, sum(CAST(NOT answer AS INT)) f FROM proxy_questions "
                        "WHERE source LIKE 'generated:%' GROUP BY 1 ORDER BY n").rows()
    assert [(n, f) for _, n, f in s] == [(11, 2), (12, 3)]


MISLED = {("alpha", 1): ["Explain the misled alpha phenomenon in depth with its causes and effects?",
                         "Describe the plain alpha mechanism and how it shaped modern alpha practice?"],
          ("beta", 1): ["Explain the misled beta process in detail with its main stages and uses?",
                        "Explain the steady beta method and its applications across many fields?"]}


@pytest.mark.parametrize("structured", ["json_schema", "none"])
def test_verify_drops_exactly_the_planted_wrong_answers(lake, structured):
    """Two `misled` questions carry two statements each whose generated answer is wrong; the closed-book check
    (the server answers the truth) drops those four and nothing else."""
    def run(verify: bool) -> dict:
        return generate(n=4, domains="alpha,beta", per_question=12, split_eval=0.0, verify=verify,
                        generator=gen_settings(server.url, structured=structured),
                        generation=GenerationSettings(questions_per_request=2, max_requests_per_domain=1),
                        lake=str(lake.root))

    with GeneratorServer(script=MISLED) as server:
        unchecked = run(verify=False)["summary"]
        before = len(server.log)
        checked = run(verify=True)["summary"]
        asked = len(server.log) - before  # the statements come from the cache: only the checks are sent
    assert "statements_failing_verification" not in unchecked
    assert checked["statements_failing_verification"] == 2 * len(PLANTED)
    assert checked.get("statements_unverified", 0) == 0
    assert checked["statements_kept"] == unchecked["statements_kept"] - 2 * len(PLANTED) == 4 * 12 - 4
    kept = lake.sql("SELECT statement, answer FROM proxy_questions").rows()
    assert len(kept) == 44
    for statement, answer in kept:  # every stored answer is now the true one
        number = int(statement.split()[2])
        assert answer == (number >= 3), statement
    assert asked == 4 * 12


def test_a_separate_verifier_and_statement_weights(lake):
    with GeneratorServer(script=MISLED) as writer, GeneratorServer() as checker:
        verifier = dataclasses.replace(gen_settings(checker.url), model="checker")
        metrics = generate(n=4, domains="alpha,beta", per_question=12, split_eval=0.0,
                           generator=gen_settings(writer.url), verifier=verifier,
                           generation=GenerationSettings(questions_per_request=2, max_requests_per_domain=1,
                                                         weights=True), lake=str(lake.root))
        checks = len(checker.log)
    assert checks == 4 * 12 and metrics["summary"]["statements_failing_verification"] == 4
    weights = lake.sql("SELECT statement, weight FROM proxy_questions").rows()
    assert {w for _, w in weights} == {1.0, 2.0, 3.0}
    assert all(w == 1 + int(s.split()[2]) % 3 for s, w in weights), "the importance the generator gave"


def test_rerun_is_free_and_idempotent(seeded_lake):
    with GeneratorServer(script=SCRIPT) as server:
        run_generate(seeded_lake, server.url)
        first = seeded_lake.sql("SELECT * FROM proxy_questions ORDER BY statement_id")
        server.log.clear()
        metrics = run_generate(seeded_lake, server.url)
        assert server.log == []  # the answer accepted after a malformed one is found again too
    assert metrics["sent"] == 0 and metrics["cached"] > 0
    assert seeded_lake.sql("SELECT * FROM proxy_questions ORDER BY statement_id").equals(first)


def test_sigkill_resumes_to_the_same_tables(lake, tmp_path):
    def cmd(root):
        return [sys.executable, "-m", "proxyreward_pl", "dataset", "generate", "--n", "24", "--domains",
                "alpha,beta,gamma", "--per-question", "12", "--generator.engine", "openai", "--generator.model",
                "writer", "--generator.base_url", server.url, "--generator.max_concurrency", "2",
                "--generation.questions_per_request", "3", "--lake", str(root)]

    with GeneratorServer(latency=0.15) as server:
        subprocess.run(cmd(tmp_path / "whole"), cwd=REPO, check=True, capture_output=True)
        server.log.clear()
        proc = subprocess.Popen(cmd(lake.root), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while len(server.log) < 12 and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        asked_before = len(server.log)
        subprocess.run(cmd(lake.root), cwd=REPO, check=True, capture_output=True)
        total = len(server.log)
    whole = Lake(tmp_path / "whole")
    for table in ("meta_questions", "proxy_questions"):
        q = f"SELECT * EXCLUDE (source) FROM {table} ORDER BY ALL"
        assert Lake(lake.root).sql(q).equals(whole.sql(q)), table
    assert total - asked_before <= 2 + (3 * 3 + 24)  # the re-run asks only what was not answered before


def test_proxyqa_statements_and_stats(lake, tmp_path):
    from tests.test_dataset import proxyqa_folder

    folder = proxyqa_folder(tmp_path / "pqa", n=6)
    with GeneratorServer() as server:
        proc = run_cli("dataset", "proxyqa", str(folder), "--per-question", "12", "--generator.engine", "openai",
                       "--generator.model", "writer", "--generator.base_url", server.url, lake=lake.root,
                       check=True)
    assert "imported 6 ProxyQA meta-questions" in proc.stdout
    q = lake.read("meta_questions")
    assert q.height == 6 and set(q["split"]) == {"eval"} and q["source"].str.starts_with("proxyqa-unofficial").all()
    assert lake.read("proxy_questions").height == 6 * 12
    stats = run_cli("dataset", "stats", lake=lake.root, check=True).stdout
    assert "false_share" in stats and "history" in stats
    run = json.loads(lake.sql("SELECT metrics FROM runs WHERE stage = 'proxyqa'").item())
    assert run["summary"]["statements_kept"] == 72


vllm = pytest.importorskip("vllm", reason="vllm(-cpu) not installed")


@pytest.mark.slow
def test_vllm_tiny_generator_end_to_end(lake):
    """Nonsense content from the tiny model, but regex-constrained structure: the command runs through."""
    script = lake.root / "gen.py"
    script.write_text(
        "import sys\n"
        "from proxyreward_pl.settings import GenerationSettings\nfrom proxyreward_pl.synthesis import generate\n"
        "from proxyreward_pl.settings import EngineSettings\n"
        "if __name__ == '__main__':\n"
        "    m = generate(n=2, domains='science,history', per_question=6, lake=sys.argv[1],\n"
        "                 generator=EngineSettings(engine='vllm', model='tiny', max_model_len=2048),\n"
        "                 generation=GenerationSettings(questions_per_request=2, max_tokens=700, min_statements=1,\n"
        "                     false_share_bounds=(0.0, 1.0), question_words=(1, 1000), statement_words=(1, 1000),\n"
        "                     near_duplicate=1.01, time_insensitive=False))\n"
        "    print('SUMMARY', m['summary'], flush=True)\n")
    proc = subprocess.run([sys.executable, str(script), str(lake.root)], cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SUMMARY" in proc.stdout
    q = lake.read("meta_questions")
    assert q.height >= 1 and (lake.read("proxy_questions").height >= q.height)
