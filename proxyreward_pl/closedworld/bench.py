"""`proxyreward closedworld build|run` (`make closedworld`): does the loop learn, where the truth is known?

`build` writes the world (world.json, corpus.jsonl, dataset.jsonl) and pretrains the tiny policy on the
corpus from scratch (cached by config and corpus). `run` then, per seed, evaluates the base policy and
samples and scores iteration 1's rollouts once in a base lake, copies that lake once per variant, and runs
the production `iterate` on each copy, which resumes at iteration 1's selection:

- proxy: pairs by proxy-reward variance (ProxyReward);
- random_pairs: the same proxy reward, questions and answer pairs drawn at random;
- length: the answer's length as the reward (what a length-biased judge would reward).

The judge is the world's exact rule judge (`engine: closedworld`), so the proxy reward is true and any
gain on the held-out people's questions is the loop's. Re-running resumes every lake where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import statistics
import time
from pathlib import Path

import polars as pl

from .. import tiny as tiny_models
from ..console import captured, say
from ..dataset import read_jsonl, store
from ..engines import shared_engines
from ..errors import ProxyRewardError
from ..iterate import health, plan, run_loop, step_log
from ..lake import Lake
from ..lake.lineage import Key, Lineage
from ..settings import (
    DataSettings,
    DPOSettings,
    EngineSettings,
    EvalSettings,
    JudgeSettings,
    LoopSettings,
    LoraSettings,
    ModelSettings,
    OptimSettings,
    RolloutSettings,
    SelectSettings,
    TinySettings,
    TrainerSettings,
    TrainingSettings,
)
from . import world as cw

VARIANTS = ("proxy", "random_pairs", "length")


def build(world: cw.WorldConfig = cw.WorldConfig(), tiny: TinySettings = TinySettings(),
          workdir: str = "closedworld") -> dict:
    """Write the world's files and pretrain the tiny policy on its corpus (both cached).

    Args:
        world: the world: people, attributes, corpus noise, held-out share.
        tiny: the policy's shape and pretraining (its corpus is the world's).
        workdir: the benchmark's folder (world/ and lakes/ go under it).
    """
    folder = Path(workdir) / "world" / f"seed{world.seed}"
    files = cw.write(world, folder)
    tiny = dataclasses.replace(tiny, corpus=str(files["corpus"]))
    t0 = time.perf_counter()
    model = tiny_models.cached(tiny)
    info = json.loads((model / "proxyreward_tiny.json").read_text())
    loss = "none" if info["warmup_final_loss"] is None else f"{info['warmup_final_loss']:.3f}"
    say(f"closed world: {world.entities} people x {world.attributes} attributes, "
          f"{sum(1 for _ in open(files['corpus']))} corpus dialogues -> {folder}\n"
          f"policy: {model} ({info['parameters'] / 1e6:.2f}M parameters, pretraining loss {loss}, "
          f"built in {info['build_seconds']} s; {time.perf_counter() - t0:.0f} s now)")
    return {"files": {k: str(v) for k, v in files.items()}, "model": str(model), "tiny": tiny}


def _variant_selection(selection: SelectSettings, variant: str, seed: int) -> SelectSettings:
    if variant == "proxy":
        return dataclasses.replace(selection, seed=seed)
    if variant == "random_pairs":
        return dataclasses.replace(selection, random_pairs=True, seed=seed)
    if variant == "length":
        return dataclasses.replace(selection, reward="length", seed=seed)
    raise ProxyRewardError(f"variants: unknown variant {variant!r} (known: {', '.join(VARIANTS)})")


def run(
    world: cw.WorldConfig = cw.WorldConfig(),
    tiny: TinySettings = TinySettings(),
    policy: EngineSettings = EngineSettings(),
    sampling: RolloutSettings = RolloutSettings(),
    judge: JudgeSettings = JudgeSettings(engine="closedworld", model="closedworld", mode="generate"),
    selection: SelectSettings = SelectSettings(),
    model: ModelSettings = ModelSettings(path="tiny"),
    lora: LoraSettings = LoraSettings(),
    dpo: DPOSettings = DPOSettings(),
    optim: OptimSettings = OptimSettings(),
    data: DataSettings = DataSettings(),
    trainer: TrainerSettings = TrainerSettings(),
    evaluation: EvalSettings = EvalSettings(),
    iterations: int = 2,
    seeds: tuple[int, ...] = (0, 1, 2),
    variants: tuple[str, ...] = VARIANTS,
    fresh: bool = False,
    verbose: bool = False,
    workdir: str = "closedworld",
) -> pl.DataFrame:
    """Run the closed-world benchmark: per seed and variant, the production loop; then the report.

    Args:
        world: the world (its seed is fixed across runs; `seeds` vary the loop).
        tiny: the policy's shape and pretraining.
        policy: the engine that samples (model `tiny` = the pretrained policy).
        sampling: rollouts (k, temperature, max_new_tokens); its seed is set per run seed.
        judge: the proxy judge (default: the world's exact judge).
        selection: pair selection of the `proxy` variant (the others derive from it).
        model: base weights for training (`tiny` = the pretrained policy).
        lora: the adapter.
        dpo: loss and reference.
        optim: AdamW and schedule.
        data: tokenisation and batching; its seed is set per run seed.
        trainer: Lightning settings; its seed is set per run seed.
        evaluation: eval decoding (samples, greedy).
        iterations: ProxyReward iterations per run.
        seeds: loop seeds (sampling, pair order, LoRA init, random pairs).
        variants: any of proxy, random_pairs, length.
        fresh: delete earlier lakes first (otherwise every lake resumes where it stopped).
        verbose: show every stage's whole output here (otherwise in each lake's logs/, and the world's build in
            world/build.log).
        workdir: the benchmark's folder (world/, lakes/ and the report go under it).
    """
    for v in variants:
        _variant_selection(selection, v, 0)  # unknown names fail before any work
    t0 = time.perf_counter()
    log = Path(workdir) / "world" / "build.log"
    say(f"[closedworld] the world and its pretrained policy (built once, about 3 minutes on 2 cores, then cached; "
        f"output: {log})")
    with captured(log, verbose):
        built = build(world, tiny, workdir)
    tiny = built["tiny"]
    lakes = Path(workdir) / "lakes" / f"world{world.seed}"
    if fresh:
        shutil.rmtree(lakes, ignore_errors=True)
    records = read_jsonl(Path(built["files"]["dataset"]))
    for seed in seeds:
        training = TrainingSettings(model=model, lora=lora, dpo=dpo, optim=optim,
                                    data=dataclasses.replace(data, seed=seed),
                                    trainer=dataclasses.replace(trainer, seed=seed))
        seeded = LoopSettings(policy=dataclasses.replace(policy, seed=seed),
                              sampling=dataclasses.replace(sampling, seed=seed), judge=judge, selection=selection,
                              training=training, evaluation=evaluation, tiny=tiny)
        # one policy engine per seed, shared by the base lake and every variant
        with captured(lakes / f"seed{seed}" / "engines.log", verbose), shared_engines():
            base = _base_lake(lakes / f"seed{seed}" / "base", records, seeded, verbose)
            for v in variants:
                dest = lakes / f"seed{seed}" / v
                if not dest.exists():
                    _copy_lake(base, dest)
                say(f"\n[closedworld] seed {seed}, {v} ({time.perf_counter() - t0:.0f} s)")
                variant = dataclasses.replace(seeded, selection=_variant_selection(selection, v, seed))
                run_loop(Lake(str(dest)), variant, iterations, report=False, verbose=verbose, tables=False)
    table = report(lakes, seeds, variants, iterations)
    say(f"\n[closedworld] finished in {time.perf_counter() - t0:.0f} s")
    return table


def _base_lake(root: Path, records, settings: LoopSettings, verbose: bool = False) -> Path:
    """Iteration 0's evaluation and iteration 1's rollouts and its proxy and length scores, shared by every
    variant of a seed (the loop's own steps, as `plan` makes them for a selection by length)."""
    lk = Lake(str(root))
    if not lk.files("meta_questions"):
        store(lk, records, "closedworld")
    by_length = dataclasses.replace(settings, selection=dataclasses.replace(settings.selection, reward="length"))
    for step in plan(by_length, 1):
        if step.stage in ("evaluate", "rollout", "score") and (step.stage, step.iteration) != ("evaluate", 1):
            if not Lineage(lk).status(Key(step.stage, step.iteration, step.reward)).current:
                say(f"[closedworld] {root.parent.name} base: {step}")
                with captured(step_log(lk, step), verbose):
                    step.run(lk)
    return root


def _copy_lake(src: Path, dest: Path) -> None:
    """A variant starts from the base lake's files (copied whole, then renamed into place)."""
    tmp = dest.with_name(f".{dest.name}.copy")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(".iterate.lock", ".write.lock"))
    tmp.rename(dest)


# -- the report -----------------------------------------------------------------------------------------
def _ci(values: list[float]) -> tuple[float, float]:
    """Mean and 95% half-width (normal approximation) over the values."""
    m = statistics.fmean(values)
    half = 1.96 * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return m, half


def answer_rows(lake: Lake) -> pl.DataFrame:
    """Per eval answer: iteration, question, greedy or not, tokens, hit the limit, facts stated about the asked
    person, and its proxy accuracy recomputed by the world's rule (for the length-score correlation)."""
    statements: dict[str, list[tuple[str, bool]]] = {}
    for s in lake.sql("SELECT question_id, statement, answer FROM proxy_questions ORDER BY position").to_dicts():
        statements.setdefault(s["question_id"], []).append((s["statement"], s["answer"]))
    names = {q["question_id"]: q["text"].removeprefix("Describe ").rstrip(".")
             for q in lake.sql("SELECT question_id, text FROM meta_questions").to_dicts()}
    rows = []
    for r in lake.read("eval_rollouts").to_dicts():
        stated = {a for e, a, _ in cw.claims(r["response"]) if e == names[r["question_id"]]}
        stmts = statements[r["question_id"]]
        acc = sum(cw.decide(s, r["response"]) == t for s, t in stmts) / len(stmts)
        rows.append({"iteration": r["iteration"], "question_id": r["question_id"], "greedy": r["sample_index"] < 0,
                     "n_tokens": r["n_tokens"], "at_limit": r["finish_reason"] == "length",
                     "facts": len(stated), "accuracy": acc})
    return pl.DataFrame(rows)


def report(lakes: Path, seeds, variants, iterations: int) -> pl.DataFrame:
    """Per variant and iteration, over seeds: held-out eval accuracy with its 95% interval over questions
    (each question's accuracy averaged over seeds), precision, greedy precision, facts per answer, length,
    length-score correlation, the chosen answers' log-prob change and the loop's degeneration flags."""
    from ..query import render

    out = []
    per_question: dict[tuple[str, int], dict[str, list[float]]] = {}
    for v in variants:
        evals, answers, healths = [], [], []
        for seed in seeds:
            lk = Lake(str(lakes / f"seed{seed}" / v))
            evals.append(lk.read("evaluations").with_columns(seed=pl.lit(seed)))
            answers.append(answer_rows(lk).with_columns(seed=pl.lit(seed)))
            healths.append(health(lk).with_columns(seed=pl.lit(seed)))
        ev, ans, hl = pl.concat(evals, how="diagonal"), pl.concat(answers), pl.concat(healths, how="diagonal")
        for n in range(iterations + 1):
            e = ev.filter(pl.col("iteration") == n)
            acc = (e.filter(pl.col("reward") == "proxy_accuracy").group_by("question_id")
                   .agg(pl.col("score").mean()).sort("question_id"))
            per_question[(v, n)] = dict(zip(acc["question_id"], acc["score"], strict=True))
            mean, half = _ci(acc["score"].to_list())

            def avg(reward: str, e=e) -> float | None:
                col = e.filter(pl.col("reward") == reward)["score"]
                return col.mean() if col.len() else None

            a = ans.filter((pl.col("iteration") == n) & ~pl.col("greedy"))
            h = hl.filter(pl.col("iteration") == n)
            flags = sorted({f for f in h["flags"].to_list() if f})
            out.append({"variant": v, "iteration": n, "accuracy": mean, "ci95": half,
                        "precision": avg("proxy_precision"), "greedy_accuracy": avg("greedy_proxy_accuracy"),
                        "greedy_precision": avg("greedy_proxy_precision"),
                        "facts": a["facts"].mean(), "tokens": a["n_tokens"].mean(),
                        "at_limit": a["at_limit"].mean(),
                        "len_score_corr": a.select(pl.corr("n_tokens", "accuracy")).item(),
                        "chosen_logp_change": h["chosen_logp_change"].mean() if n else None,
                        "flags": f"{len(flags)} seed(s): " + " | ".join(flags) if flags else ""})
    table = pl.DataFrame(out).with_columns(pl.selectors.float().round(3))
    title = "held-out eval, mean over seeds " + ", ".join(map(str, seeds))
    compact = table.select("variant", "iteration", "accuracy", "ci95", "precision", "facts", "tokens", "flags")
    say(f"\n[closedworld] {title} (every column: report.txt)\n" + render(compact))
    lines = []
    for n in range(1, iterations + 1):
        base = per_question[(variants[0], 0)]
        for v in variants:
            gain = [per_question[(v, n)][q] - base[q] for q in base]
            m, h = _ci(gain)
            lines.append(f"iteration {n}, {v}: accuracy gain over the base {m:+.3f} +- {h:.3f}")
        for v in variants[1:]:
            if variants[0] == "proxy":
                diff = [per_question[("proxy", n)][q] - per_question[(v, n)][q] for q in base]
                m, h = _ci(diff)
                lines.append(f"iteration {n}: proxy minus {v} {m:+.3f} +- {h:.3f} (paired over questions)")
    say("\n".join(lines))
    (lakes / "report.json").write_text(json.dumps({"table": table.to_dicts(), "comparisons": lines}, indent=1))
    (lakes / "report.txt").write_text(f"{title}\n{render(table)}\n\n" + "\n".join(lines) + "\n")
    say(f"[closedworld] report: {lakes / 'report.txt'} (and report.json); each lake's own: proxyreward report "
        f"--lake {lakes / f'seed{seeds[0]}' / variants[0]}")
    return table
