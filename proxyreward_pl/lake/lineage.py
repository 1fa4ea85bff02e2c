"""Lineage: what every stage run was made from, and whether it still is current.

Each run of a loop stage records, when it starts, the identity of everything it reads (`runs.inputs`) and,
when it finishes, the identity of what it wrote (`runs.output`). Identities are contents, not paths: a policy
by its weights, a base model by its config and weight index, a table partition by a digest of its rows, a
prompt template or SQL file by its hash. A finished run is *current* when its inputs, recomputed now, are what
they were and every run it read from is current itself; otherwise it is *stale*, with the reasons.

    rollout N   <- iteration N-1's policy, the train questions
    score N R   <- rollout N's output, the statements of its questions, reward R's prompt templates
    select N    <- score N of the selection (and conflict) reward, rollout N, the selection SQL
    train N     <- select N's pairs, iteration N-1's policy (the start and the reference), the base model
    evaluate N  <- iteration N's policy, the eval questions and statements, the proxy judge's template

`iterate` redoes a stale stage and whatever follows from it; a single-stage command refuses to build on a stale
or missing input (naming it, and the command that refreshes it) unless forced.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import polars as pl

from .. import prompts
from ..identity import model_identity, weights_digest
from ..paths import SQL_DIR
from .contract import LakeError
from .store import Lake

LOOP_STAGES = ("rollout", "score", "select", "train", "evaluate")
REWARD_TEMPLATES = {"proxy": ("proxy_judge",), "llm_judge": ("llm_judge",), "length": (),
                    "longreward": ("helpfulness", "logicality", "faithfulness_statements", "faithfulness_support",
                                   "completeness_extract", "completeness")}
POLICY_TEMPLATES = ("policy",)  # how a question (and its context) is put to the policy
SELECTION_COLUMNS = ("question_id", "chosen_rollout_id", "rejected_rollout_id", "chosen_score", "rejected_score",
                     "score_variance")


class StaleInputError(LakeError):
    """A stage was asked to build on a stale or missing input; the message names it and its refresh."""


def reward_family(reward: str) -> str:
    """The `score --reward` that produces a reward (proxy_precision -> proxy, longreward_logicality -> ...)."""
    for family in REWARD_TEMPLATES:
        if reward == family or reward.startswith(family + "_"):
            return family
    raise LakeError(f"reward {reward!r} is not produced by any `score --reward` ({', '.join(REWARD_TEMPLATES)})")


# -- identities ------------------------------------------------------------------------------------------
def rows_digest(lake: Lake, query: str, params: list | None = None) -> str:
    """A digest of a query's rows, independent of their order (each row's MD5, combined by XOR; keys make rows
    unique, so none cancels another)."""
    value = lake.sql(f"SELECT bit_xor(md5_number(CAST(t AS VARCHAR))) AS d FROM ({query}) AS t", params).item()
    return "empty" if value is None else f"{int(value) & (2**128 - 1):032x}"[:16]


def policy_identity(lake: Lake, iteration: int, base: str) -> str:
    """Iteration N's policy: the base model (N = 0), or N's fully fine-tuned model, or N's adapter."""
    if iteration == 0:
        return model_identity(base)
    full = lake.model_dir(iteration)
    if (full / "config.json").exists():
        return f"full:{weights_digest(full)}"
    adapter = lake.adapter_dir(iteration) / "adapter_model.safetensors"
    return f"adapter:{weights_digest(adapter.parent, adapter.name)}" if adapter.exists() else "none"


def templates_identity(names: tuple[str, ...]) -> str:
    return ",".join(f"{n}:{prompts.template_hash(n)}" for n in names)


def sql_identity(name: str) -> str:
    return f"{name}:{hashlib.sha256((SQL_DIR / f'{name}.sql').read_bytes()).hexdigest()[:16]}"


def _family_rows(table: str) -> str:
    return f"SELECT * FROM {table} WHERE iteration = ? AND (reward = ? OR starts_with(reward, ? || '_'))"


# -- what each stage reads and writes --------------------------------------------------------------------
@dataclass(frozen=True)
class Key:
    """A stage run's place: the latest finished run with this key holds the stage's current output."""

    stage: str
    iteration: int
    reward: str | None = None

    def __str__(self) -> str:
        return f"iteration {self.iteration} {self.stage}{' ' + self.reward if self.reward else ''}"

    def command(self) -> str:
        reward = f" --reward {self.reward}" if self.reward else ""
        return f"proxyreward {self.stage} --iteration {self.iteration}{reward}"


def _base_of(config: dict, section: str) -> str:
    return (config.get(section) or {}).get("model" if section != "model" else "path", "")


def upstream(key: Key, config: dict) -> list[Key]:
    """The stage runs whose outputs `key`'s run reads."""
    n = key.iteration
    if key.stage == "rollout":
        return [Key("train", n - 1)] if n > 1 else []
    if key.stage == "score":
        return [Key("rollout", n)]
    if key.stage == "select":
        rewards = {reward_family(config.get("reward", "proxy_accuracy"))}
        if config.get("conflict_reward"):
            rewards.add(reward_family(config["conflict_reward"]))
        return [Key("score", n, r) for r in sorted(rewards)] + [Key("rollout", n)]
    if key.stage == "train":
        return [Key("select", n)] + ([Key("train", n - 1)] if n > 1 else [])
    if key.stage == "evaluate":
        return [Key("train", n)] if n > 0 else []
    return []


def inputs(lake: Lake, key: Key, config: dict) -> dict[str, str]:
    """The identities of what a run of `key` with this config reads, as the lake holds them now."""
    n, out = key.iteration, {}
    for up in upstream(key, config):
        out[str(up)] = output_of(lake, up) or "missing"
    if key.stage == "rollout":
        out["policy"] = policy_identity(lake, n - 1, _base_of(config, "policy"))
        out["questions"] = rows_digest(lake, "SELECT question_id, text, context FROM meta_questions "
                                             "WHERE split = 'train'")
        out["prompts"] = templates_identity(POLICY_TEMPLATES)
    elif key.stage == "score" and key.reward != "length":
        out["statements"] = rows_digest(lake, "SELECT * FROM proxy_questions WHERE question_id IN "
                                              "(SELECT question_id FROM rollouts WHERE iteration = ?)", [n])
        out["prompts"] = templates_identity(REWARD_TEMPLATES.get(key.reward or "", ()))
    elif key.stage == "select":
        out["sql"] = sql_identity("select_random_pairs" if config.get("random_pairs") else "select_pairs")
    elif key.stage == "train":
        out["policy"] = policy_identity(lake, n - 1, _base_of(config, "model"))
        out["base"] = model_identity(_base_of(config, "model"))
        out["sql"] = sql_identity("train_pairs")
        out["prompts"] = templates_identity(POLICY_TEMPLATES)
    elif key.stage == "evaluate":
        out["policy"] = policy_identity(lake, n, _base_of(config, "policy"))
        out["questions"] = rows_digest(lake, "SELECT q.question_id, q.text, q.context, s.statement_id, s.statement, "
                                             "s.answer FROM meta_questions q LEFT JOIN proxy_questions s "
                                             "USING (question_id) WHERE q.split = 'eval'")
        out["prompts"] = templates_identity(REWARD_TEMPLATES["proxy"] + POLICY_TEMPLATES)
    return out


def output(lake: Lake, key: Key, config: dict) -> str:
    """The identity of what a finished run of `key` wrote."""
    n = key.iteration
    if key.stage == "rollout":
        return rows_digest(lake, "SELECT * FROM rollouts WHERE iteration = ?", [n])
    if key.stage == "score":
        return rows_digest(lake, _family_rows("scores"), [n, key.reward, key.reward])
    if key.stage == "select":
        return rows_digest(lake, f"SELECT {', '.join(SELECTION_COLUMNS)} FROM pairs WHERE iteration = ?", [n])
    if key.stage == "train":
        return policy_identity(lake, n, _base_of(config, "model"))
    if key.stage == "evaluate":
        return rows_digest(lake, "SELECT * FROM evaluations WHERE iteration = ?", [n])
    return ""


# -- runs ----------------------------------------------------------------------------------------------
def latest_run(lake: Lake, key: Key) -> dict | None:
    rows = lake.sql("SELECT * FROM runs WHERE iteration = ? AND stage = ? AND reward IS NOT DISTINCT FROM ? "
                    "AND status = 'finished' ORDER BY finished_at DESC LIMIT 1",
                    [key.iteration, key.stage, key.reward]).to_dicts()
    return rows[0] if rows else None


def output_of(lake: Lake, key: Key) -> str | None:
    run = latest_run(lake, key)
    return None if run is None else (run.get("output") or "unrecorded")


@dataclass
class Status:
    key: Key
    run: dict | None
    changed: dict[str, tuple[str, str]] = field(default_factory=dict)
    stale_upstream: list[Key] = field(default_factory=list)

    @property
    def current(self) -> bool:
        return self.run is not None and not self.changed and not self.stale_upstream

    def reasons(self) -> list[str]:
        if self.run is None:
            return ["no finished run"]
        out = [f"its input {name} changed ({old} -> {new})" for name, (old, new) in self.changed.items()]
        return out + [f"built on {up}, which is stale" for up in self.stale_upstream]


class Lineage:
    """Statuses of the lake's stage runs, each computed once (statuses of shared upstream runs are reused)."""

    def __init__(self, lake: Lake):
        self.lake = lake
        self._memo: dict[Key, Status] = {}

    def status(self, key: Key) -> Status:
        if key in self._memo:
            return self._memo[key]
        run = latest_run(self.lake, key)
        status = Status(key, run)
        self._memo[key] = status
        if run is None or run.get("inputs") is None:  # no run, or one made before lineage was recorded
            return status
        config = json.loads(run["config"] or "{}")
        recorded = json.loads(run["inputs"])
        now = inputs(self.lake, key, config)
        status.changed = {k: (recorded.get(k, "none"), v) for k, v in now.items() if recorded.get(k) != v}
        status.stale_upstream = [up for up in upstream(key, config) if self.stale(up)]
        return status

    def stale(self, key: Key) -> bool:
        """A run exists and is not current (rows written without a run have no lineage to judge)."""
        status = self.status(key)
        return status.run is not None and not status.current


def check_inputs(lake: Lake, key: Key, config: dict) -> None:
    """Refuse to run `key` on stale inputs (StaleInputError naming where the staleness starts, the command that
    refreshes it, and what was built on it in between)."""
    lineage = Lineage(lake)
    stale = [up for up in upstream(key, config) if lineage.stale(up)]  # a missing input is the stage's to report
    if not stale:
        return
    origins: dict[Key, Status] = {}
    chain: list[Key] = []
    todo = list(stale)
    while todo:
        current = todo.pop(0)
        status = lineage.status(current)
        if current not in chain:
            chain.append(current)
        if status.changed:
            origins[current] = status
        todo += [up for up in status.stale_upstream if up not in chain]
    lines = [f"{k} is stale ({'; '.join(s.reasons())}); refresh it with `{k.command()}`" for k, s in origins.items()]
    between = [k for k in reversed(chain) if k not in origins]
    if between:
        lines.append("then redo what was built on it: " + ", ".join(map(str, between)))
    raise StaleInputError(f"{key} would build on stale inputs:\n  " + "\n  ".join(lines) +
                          "\nor run `proxyreward iterate`, which redoes all of it; `--force true` builds on them "
                          "anyway")


def lineage_table(lake: Lake, iteration: int | None = None) -> pl.DataFrame:
    """Every loop stage's latest finished run: its inputs and whether it is current (and why not)."""
    lineage = Lineage(lake)
    keys = lake.sql("SELECT DISTINCT iteration, stage, reward FROM runs WHERE status = 'finished' AND stage IN "
                    f"({', '.join(repr(s) for s in LOOP_STAGES)}) ORDER BY iteration").to_dicts()
    order = {s: i for i, s in enumerate(LOOP_STAGES)}
    rows = []
    for k in sorted(keys, key=lambda r: (r["iteration"], order[r["stage"]], r["reward"] or "")):
        if iteration is not None and k["iteration"] != iteration:
            continue
        status = lineage.status(Key(k["stage"], k["iteration"], k["reward"]))
        recorded = json.loads(status.run.get("inputs") or "{}")
        rows.append({"iteration": k["iteration"], "stage": k["stage"], "reward": k["reward"],
                     "run_id": status.run["run_id"], "finished_at": status.run["finished_at"],
                     "inputs": ", ".join(f"{name}={value}" for name, value in recorded.items()) or "(not recorded)",
                     "output": status.run.get("output"), "current": status.current,
                     "why": "; ".join(status.reasons()) if not status.current else ""})
    schema = {"iteration": pl.Int64, "stage": pl.Utf8, "reward": pl.Utf8, "run_id": pl.Utf8,
              "finished_at": pl.Datetime, "inputs": pl.Utf8, "output": pl.Utf8, "current": pl.Boolean, "why": pl.Utf8}
    return pl.DataFrame(rows, schema=schema)

