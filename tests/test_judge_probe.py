"""The judge probe: responses built from the lake's statements (asserted, denied, elsewhere), asked as `score`
asks, tallied per class; against a real HTTP judge whose rule is known, and against the tiny model."""

from __future__ import annotations

import json

import pytest

from proxyreward_pl import judge_probe
from proxyreward_pl.dataset import seed_records
from proxyreward_pl.judging import statements_by_question
from proxyreward_pl.settings import JudgeSettings
from tests.helpers import run_cli, truth
from tests.servers.judge import JudgeServer


def test_deny_reads_on_in_lower_case_but_keeps_names():
    assert judge_probe.deny("The Calvin cycle takes place in the stroma.") == \
        "It is not true that the Calvin cycle takes place in the stroma."
    assert judge_probe.deny("Pierre de Coubertin was a German aristocrat.") == \
        "It is not true that Pierre de Coubertin was a German aristocrat."


def test_questions_are_picked_domain_by_domain(seeded_lake):
    picked = judge_probe.pick_questions(seeded_lake.read("meta_questions").to_dicts(), 10)
    domains = [q["domain"] for q in picked]
    assert len(set(domains[:8])) == 8 and domains[8] == domains[0]


def test_every_statement_lands_in_one_class_with_a_response_that_settles_it(seeded_lake):
    statements = statements_by_question(seeded_lake)
    picked = judge_probe.pick_questions(seeded_lake.read("meta_questions").to_dicts(), 6)
    items = judge_probe.build_items(picked, statements)
    dealt = [s["statement_id"] for it in items for s in it["statements"]]
    assert sorted(dealt) == sorted(s["statement_id"] for q in picked for s in statements[q["question_id"]])
    for it in items:
        for s in it["statements"]:
            text = s["statement"].rstrip(".")
            if it["expected"] == "True":
                assert text in it["response"] and "not true" not in it["response"]
            elif it["expected"] == "False":
                assert judge_probe.deny(s["statement"]) in it["response"]
            else:
                assert text[1:] not in it["response"]
    counts = {c: sum(len(it["statements"]) for it in items if it["expected"] == c) for c in judge_probe.CLASSES}
    assert max(counts.values()) - min(counts.values()) <= len(picked)


@pytest.mark.parametrize("mode", ["generate", "logprob"])
def test_a_judge_that_answers_from_its_own_knowledge_is_caught(seeded_lake, tmp_path, mode):
    """The fixture judge decides a statement it finds in the response by the dataset's truth, not by what the
    response says, and says Unknown otherwise: the probe must show exactly that."""
    out = tmp_path / "probe.json"
    with JudgeServer(truth=truth(), mention_rule=True) as server:
        report = judge_probe.probe(JudgeSettings(engine="openai", base_url=server.url, model="judge",
                                                 retry_initial=0.01, retry_max=0.05, mode=mode),
                                   questions=8, out=str(out), lake=str(seeded_lake.root))
    by_id = {s["statement_id"]: s for s in seeded_lake.read("proxy_questions").to_dicts()}
    verdicts = json.loads(out.read_text())["verdicts"]
    assert len(verdicts) == report["statements"] == sum(c["n"] for c in report["per_class"].values())
    expected_answer = {"True": lambda s: str(s["answer"]), "False": lambda s: str(s["answer"]),
                       "Unknown": lambda s: "Unknown"}
    for v in verdicts:
        assert v["answered"] == expected_answer[v["expected"]](by_id[v["statement_id"]]), v
    true_share = {c: sum(by_id[v["statement_id"]]["answer"] for v in verdicts if v["expected"] == c)
                  / report["per_class"][c]["n"] for c in ("True", "False")}
    assert report["per_class"]["True"]["accuracy"] == pytest.approx(true_share["True"])
    assert report["per_class"]["False"]["accuracy"] == pytest.approx(1 - true_share["False"])
    assert report["per_class"]["Unknown"]["accuracy"] == 1.0  # both modes can say Unknown


def test_probe_of_the_tiny_judge_through_the_cli_is_paid_once(seeded_lake, tmp_path):
    args = ("judge", "probe", "--config", "configs/tiny.yaml", "--judge.engine", "hf", "--judge.mode", "logprob",
            "--questions", "2",
            "--split", "eval")
    first = run_cli(*args, "--out", str(tmp_path / "a.json"), lake=seeded_lake.root, check=True)
    assert "3-way accuracy" in first.stdout and "hf:tiny|logprob" in first.stdout
    report = json.loads((tmp_path / "a.json").read_text())
    n = sum(len(s) for q, s in statements_by_question(seeded_lake).items()
            if q in {v["rollout_id"].split(":")[1] for v in report["verdicts"]})
    assert report["statements"] == n == report["sent"] and report["questions"] == 2
    assert report["per_class"]["Unknown"]["answered"]["Unknown"] == 0  # logprob mode cannot say Unknown
    assert report["per_class"]["Unknown"]["accuracy"] == 0.0
    assert all(v["answered"] in ("True", "False") for v in report["verdicts"])
    again = run_cli(*args, "--out", str(tmp_path / "b.json"), lake=seeded_lake.root, check=True)
    assert f"0 judge requests sent, {n} from cache" in again.stdout
    assert json.loads((tmp_path / "b.json").read_text())["verdicts"] == report["verdicts"]


def test_probe_refuses_what_it_cannot_probe(seeded_lake):
    proc = run_cli("judge", "probe", "--questions", "0", lake=seeded_lake.root)
    assert proc.returncode == 1 and "--questions: must be >= 1" in proc.stderr
    assert len(seed_records()) == seeded_lake.read("meta_questions").height  # nothing written
