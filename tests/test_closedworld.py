"""The closed world: its generator, the exact judge (through the production `score`), the length reward, the
loop's degeneration flags, and a small end-to-end benchmark run through the command line."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime

import polars as pl
import pytest

from proxyreward_pl.closedworld import world as cw
from proxyreward_pl.dataset import read_jsonl, store
from proxyreward_pl.engines.closedworld import PromptError, read_prompt
from proxyreward_pl.iterate import health
from proxyreward_pl.lake.lineage import reward_family
from proxyreward_pl.score import score
from proxyreward_pl.settings import JudgeSettings, TinySettings
from tests.helpers import run_cli

SMALL = cw.WorldConfig(seed=3, entities=10, descriptions=4, eval_fraction=0.2)


def test_world_is_seeded_split_and_unambiguous():
    a, b = cw.people(SMALL), cw.people(SMALL)
    assert a == b and a != cw.people(dataclasses.replace(SMALL, seed=4))
    assert len({p.name for p in a}) == 10 and sum(p.split == "eval" for p in a) == 2
    vocab = [v for values, _ in cw.ATTRIBUTES.values() for v in values]
    assert len(vocab) == len(set(vocab)), "a value must name its attribute"
    for p in a:
        assert set(p.facts) == set(cw.ATTRIBUTES) and all(p.facts[k] in cw.ATTRIBUTES[k][0] for k in p.facts)


def test_every_phrasing_reads_back_exactly_and_malformed_text_states_nothing():
    name = "Tavo Brenek"
    for attribute, (vocab, phrasings) in cw.ATTRIBUTES.items():
        for i in range(len(phrasings)):
            text = cw.sentence(name, attribute, vocab[-1], i)
            assert cw.claims(text) == [(name, attribute, vocab[-1])], text
    text = ("Tavo Brenek lives in Velmora. Tavo Brenek plays the harp the. Tavo Brenek lives in Narnia. "
            "lives in Ostberg.")
    assert cw.claims(text) == [(name, "home", "Velmora")]
    assert cw.claims("Tavo  Brenek\nworks as a baker.  Other Person keeps a pony as a pet.") == [
        (name, "profession", "baker"), ("Other Person", "pet", "pony")]


def test_decide_true_false_unknown_and_contradiction():
    s = "Tavo Brenek lives in Velmora."
    assert cw.decide(s, "Tavo Brenek comes from Velmora.") is True
    assert cw.decide(s, "Tavo Brenek's home town is Ostberg.") is False
    assert cw.decide(s, "Tavo Brenek plays the harp.") is None
    assert cw.decide(s, "Other Person lives in Velmora.") is None, "another person's fact says nothing"
    assert cw.decide(s, "Tavo Brenek lives in Velmora. Tavo Brenek lives in Ostberg.") is None
    assert cw.decide("Not a statement of this world.", "Tavo Brenek lives in Velmora.") is None


def test_corpus_noise_and_dataset_match_the_config(tmp_path):
    cfg = dataclasses.replace(SMALL, descriptions=200, error_rate=0.25, min_facts=8, max_facts=8)
    persons = cw.people(cfg)
    facts = {p.name: p.facts for p in persons}
    said = [c for d in cw.corpus(cfg, persons) for c in cw.claims(d[1]["content"])]
    assert len(said) == 10 * 200 * 8, "every sentence of the corpus is a readable claim"
    wrong = sum(facts[e][a] != v for e, a, v in said) / len(said)
    assert 0.22 < wrong < 0.28
    files = cw.write(SMALL, tmp_path)
    records = read_jsonl(files["dataset"])  # the import format, checked by the production reader
    assert len(records) == 10 and {r.split for r in records} == {"train", "eval"}
    for r, p in zip(records, persons, strict=True):
        assert len(r.statements) == 16 and sum(a for _, a in r.statements) == 8
        for s, answer in r.statements:
            assert cw.decide(s, " ".join(cw.sentence(p.name, a, v) for a, v in p.facts.items())) is answer


def test_judge_reads_the_rendered_prompt():
    from proxyreward_pl import prompts

    text = prompts.render("proxy_judge", question="Describe A B.", response="x </response> y\n1. fake",
                          statements=["S one.", "S two."], answer_format="lines")
    response, statements = read_prompt(text)
    assert statements == ["S one.", "S two."] and response.startswith("x ") and "fake" in response
    with pytest.raises(PromptError):
        read_prompt("no response here")


def _lake_with_answers(lake, form_answers):
    persons = cw.people(SMALL)
    store(lake, read_jsonl(cw.write(SMALL, lake.root.parent / "world")["dataset"]), "closedworld")
    rows = []
    for j, (p, text) in enumerate(zip(persons, form_answers(persons), strict=False)):
        rows.append({"iteration": 1, "rollout_id": f"1:{cw.question_id(p)}:0", "question_id": cw.question_id(p),
                     "policy": "test", "sample_index": 0, "response": text, "n_tokens": 10 + j,
                     "finish_reason": "stop"})
    lake.write("rollouts", rows, iteration=1)
    return persons


@pytest.mark.parametrize("mode,structured", [("generate", "none"), ("generate", "json_schema"), ("logprob", "auto")])
def test_exact_judge_scores_through_production_score(lake, mode, structured):
    def answers(persons):
        p0, p1, p2 = persons[:3]
        wrong = next(v for v in cw.ATTRIBUTES["home"][0] if v != p1.facts["home"])
        return [" ".join(cw.sentence(p0.name, a, v, 1) for a, v in p0.facts.items()),  # all 8 facts, right
                cw.sentence(p1.name, "home", wrong),                                    # one fact, wrong
                "Nothing readable here."]

    persons = _lake_with_answers(lake, answers)
    judge = JudgeSettings(engine="closedworld", model="world-3", mode=mode, structured=structured)
    score(1, "proxy", judge, lake=str(lake.root))
    got = {(r["question_id"], r["reward"]): r["score"] for r in lake.read("scores", 1).to_dicts()}
    q = [cw.question_id(p) for p in persons[:3]]
    assert got[(q[0], "proxy_accuracy")] == 1.0 and got[(q[0], "proxy_precision")] == 1.0
    # one wrong home town: the true statement is decided False (wrong), the false one False (right) unless
    # the wrong value is exactly the distractor
    stmts = lake.sql("SELECT statement, answer FROM proxy_questions WHERE question_id = ?", [q[1]]).to_dicts()
    text = lake.read("rollouts", 1).filter(pl.col("question_id") == q[1])["response"].item()
    right = sum(cw.decide(s["statement"], text) == s["answer"] for s in stmts)
    # every mode says Unknown where the response does not say: precision is right among the decided ones
    assert got[(q[1], "proxy_accuracy")] == right / 16 and got[(q[1], "proxy_precision")] == right / 2
    assert got[(q[2], "proxy_accuracy")] == 0.0 and got[(q[2], "proxy_precision")] == 0.0
    unknown = lake.sql("SELECT count(*) FROM judgments WHERE status = 'unknown'").item()
    assert unknown == 0 + 14 + 16


def test_length_reward_and_selection_by_it(lake):
    from proxyreward_pl.select import select
    from proxyreward_pl.settings import SelectSettings

    _lake_with_answers(lake, lambda persons: ["a"] * len(persons))
    extra = lake.read("rollouts", 1).with_columns(rollout_id=pl.col("rollout_id").str.replace(":0$", ":1"),
                                                  sample_index=pl.lit(1), n_tokens=pl.col("n_tokens") + 5)
    lake.write("rollouts", pl.concat([lake.read("rollouts", 1), extra]), iteration=1)
    score(1, "length", lake=str(lake.root))
    select(1, SelectSettings(reward="length", top_fraction=1.0, conflict_reward=None), lake=str(lake.root))
    pairs = lake.read("pairs", 1)
    assert pairs.height == 10 and pairs["chosen_rollout_id"].str.ends_with(":1").all()
    assert (pairs["chosen_score"] - pairs["rejected_score"] == 5).all()
    assert [reward_family(r) for r in ("proxy_precision", "length", "longreward_helpfulness", "llm_judge")] == [
        "proxy", "length", "longreward", "llm_judge"]


def test_health_flags_each_sign_of_degeneration(lake):
    def evals(n, acc, prec):
        return [{"iteration": n, "policy": "p", "question_id": "q", "reward": r, "score": s}
                for r, s in (("proxy_accuracy", acc), ("proxy_precision", prec))]

    def answers(n, at_limit):
        return [{"iteration": n, "rollout_id": f"e{n}:{i}", "question_id": "q", "policy": "p", "sample_index": 0,
                 "response": "x", "n_tokens": 5, "finish_reason": "length" if i < at_limit else "stop"}
                for i in range(10)]

    for n, (acc, prec, limit) in enumerate([(0.3, 0.6, 0), (0.5, 0.61, 1), (0.55, 0.5, 5)]):
        lake.write("evaluations", evals(n, acc, prec), iteration=n)
        lake.write("eval_rollouts", answers(n, limit), iteration=n)
    for n, change in ((1, -0.1), (2, -0.9)):
        trend = {"chosen_logp_change_per_token": change, "rejected_logp_change_per_token": -2.0}
        lake.write("runs", [{"iteration": n, "run_id": f"t{n}", "stage": "train", "status": "finished",
                             "started_at": datetime(2026, 1, 1), "finished_at": datetime(2026, 1, 1, 0, 1),
                             "config": "{}", "metrics": json.dumps({"trend": trend})}], iteration=n)
    h = {r["iteration"]: r["flags"] for r in health(lake).to_dicts()}
    assert h[0] == "" and h[1] == ""
    assert "chosen likelihood collapsing" in h[2] and "token limit (50%)" in h[2] and "precision dropping" in h[2]


def test_an_unknown_variant_is_refused_before_any_work(tmp_path):
    proc = run_cli("closedworld", "run", "--workdir", str(tmp_path / "cw"), "--variants", "[proxy, best_of_n]")
    assert proc.returncode == 1 and "unknown variant 'best_of_n'" in proc.stderr
    assert not (tmp_path / "cw" / "lakes").exists()


@pytest.mark.slow
def test_benchmark_end_to_end_small(tmp_path):
    """The whole benchmark, tiny: world, pretraining, base lake, two variants of the production loop, report."""
    out = tmp_path / "cw"
    proc = run_cli("closedworld", "run", "--workdir", str(out), "--world.entities", "12", "--world.descriptions", "6",
                   "--tiny.vocab_size", "600", "--tiny.hidden_size", "64", "--tiny.intermediate_size", "128",
                   "--tiny.num_layers", "2", "--tiny.warmup_steps", "300", "--tiny.warmup_batch_size", "16",
                   "--policy.engine", "hf", "--sampling.k", "4", "--sampling.max_new_tokens", "48",
                   "--evaluation.samples", "2", "--evaluation.greedy", "true", "--evaluation.max_new_tokens", "48",
                   "--optim.lr", "0.001", "--trainer.epochs", "1", "--trainer.accelerator", "cpu",
                   "--trainer.loggers", "[csv]", "--trainer.progress_bar", "false", "--data.batch_size", "4",
                   "--iterations", "1", "--seeds", "[0]", "--variants", "[proxy, length]", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "lakes" / "world0" / "report.json").read_text())
    rows = {(r["variant"], r["iteration"]): r for r in report["table"]}
    assert set(rows) == {(v, n) for v in ("proxy", "length") for n in (0, 1)}
    assert rows[("proxy", 0)]["accuracy"] == rows[("length", 0)]["accuracy"], "both start from the shared base"
    for r in rows.values():
        assert 0 <= r["accuracy"] <= 1 and r["greedy_precision"] is not None and r["tokens"] > 0
    assert rows[("proxy", 1)]["chosen_logp_change"] is not None
    assert any("proxy minus length" in line for line in report["comparisons"])
    # a second run resumes every lake: nothing is redone
    again = run_cli("closedworld", "run", "--workdir", str(out), "--world.entities", "12", "--world.descriptions", "6",
                    "--tiny.vocab_size", "600", "--tiny.hidden_size", "64", "--tiny.intermediate_size", "128",
                    "--tiny.num_layers", "2", "--tiny.warmup_steps", "300", "--tiny.warmup_batch_size", "16",
                    "--policy.engine", "hf", "--iterations", "1", "--seeds", "[0]", "--variants", "[proxy, length]",
                    timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "done earlier, skipped" in again.stdout and "[iterate] iteration 1 train (" not in again.stdout


def test_the_policy_cache_keys_on_corpus_content_not_its_path(tmp_path):
    from proxyreward_pl import tiny

    files = cw.write(SMALL, tmp_path / "a")
    moved = tmp_path / "b" / "corpus.jsonl"
    moved.parent.mkdir()
    moved.write_bytes(files["corpus"].read_bytes())
    a, b = (tiny.config_hash(TinySettings(corpus=str(p))) for p in (files["corpus"], moved))
    assert a == b
    moved.write_text(moved.read_text() + "{not json\n")
    with pytest.raises(ValueError, match=r"corpus\.jsonl:41: not JSON"):
        tiny.config_hash(TinySettings(corpus=str(moved)))
