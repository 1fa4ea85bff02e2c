"""`proxyreward report`: one self-contained HTML page (PNG plots embedded) about the lake's iterations."""

from __future__ import annotations

import base64
import html
import io
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from .lake import Lake


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig, out_dir: Path, name: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _figure().close(fig)
    (out_dir / f"{name}.png").write_bytes(buf.getvalue())
    return base64.b64encode(buf.getvalue()).decode()


def training_curves(lake: Lake) -> pl.DataFrame:
    """Per-step training metrics of every iteration, from the CSV logs under runs/iteration=N/train/."""
    frames = []
    for csv in sorted((lake.root / "runs").glob("iteration=*/train/logs/metrics.csv")):
        it = int(csv.parts[-4].split("=")[1])
        frame = pl.read_csv(csv, infer_schema_length=10_000)
        wanted = ("step", "loss", "rewards/margins", "rewards/accuracies", "logps/chosen")
        keep = [c for c in wanted if c in frame.columns]
        frames.append(frame.select(keep).filter(pl.col("loss").is_not_null()).with_columns(iteration=pl.lit(it)))
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def plots(lake: Lake, out_dir: Path) -> list[tuple[str, str]]:
    plt = _figure()
    figures = []
    scores = lake.run_sql_file("report/rollout_scores")
    if not scores.is_empty():
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for it in sorted(scores["iteration"].unique()):
            ax.hist(scores.filter(pl.col("iteration") == it)["score"], bins=20, range=(0, 1), alpha=0.5,
                    label=f"iteration {it}")
        ax.set(xlabel="proxy accuracy of a rollout", ylabel="rollouts", title="Score distribution per iteration")
        ax.legend()
        figures.append(("Score distributions", _png(fig, out_dir, "scores")))

        fig, ax = plt.subplots(figsize=(6, 3.5))
        for it in sorted(scores["iteration"].unique()):
            part = scores.filter(pl.col("iteration") == it)
            ax.scatter(part["n_tokens"], part["score"], s=8, alpha=0.5, label=f"iteration {it}")
        ax.set(xlabel="response length (tokens)", ylabel="proxy accuracy", title="Length against score")
        ax.legend()
        figures.append(("Response length against score (length bias)", _png(fig, out_dir, "length_bias")))

    variance = lake.run_sql_file("report/question_variance")
    if not variance.is_empty():
        last = variance["iteration"].max()
        variance = variance.filter(pl.col("iteration") == last)
        cut = variance["selection_cut"][0]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(variance["variance"].drop_nulls(), bins=20, color="tab:blue")
        if cut is not None:
            ax.axvline(cut, color="tab:red", linestyle="--", label=f"selection cut ({cut:.4f})")
            ax.legend()
        ax.set(xlabel="variance of proxy accuracy within a question", ylabel="questions",
               title=f"Reward variance, iteration {last}")
        figures.append(("Variance and the selection cut", _png(fig, out_dir, "variance")))

    evals = lake.run_sql_file("report/evaluation")
    if not evals.is_empty():
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for reward in sorted(evals["reward"].unique()):
            part = evals.filter(pl.col("reward") == reward)
            ax.plot(part["iteration"], part["score"], marker="o", label=reward)
        ax.set(xlabel="iteration", ylabel="mean over eval questions", title="Evaluation per iteration")
        ax.set_xticks(sorted(evals["iteration"].unique()))
        ax.legend()
        figures.append(("Evaluation accuracy per iteration", _png(fig, out_dir, "evaluation")))

    curves = training_curves(lake)
    if not curves.is_empty():
        metrics = [c for c in ("loss", "rewards/margins", "rewards/accuracies") if c in curves.columns]
        fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2))
        for ax, metric in zip(axes if len(metrics) > 1 else [axes], metrics, strict=True):
            for it in sorted(curves["iteration"].unique()):
                part = curves.filter(pl.col("iteration") == it)
                ax.plot(range(part.height), part[metric], label=f"iteration {it}")
            ax.set(title=metric, xlabel="logged step")
        axes[0].legend() if len(metrics) > 1 else None
        figures.append(("Training curves", _png(fig, out_dir, "training")))
    return figures


def write_report(lake: Lake, out: Path | None = None) -> Path:
    out_dir = Path(out) if out else lake.root / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    from .lake.lineage import lineage_table
    from .query import render

    summary = lake.run_sql_file("analysis/iteration_summary")
    table5 = lake.run_sql_file("analysis/variance_by_iteration")
    lineage = lineage_table(lake).select("iteration", "stage", "reward", "current", "why")
    sections = "".join(f'<h2>{html.escape(title)}</h2><img src="data:image/png;base64,{data}" '
                       f'alt="{html.escape(title)}">' for title, data in plots(lake, out_dir))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>proxyreward report</title><style>"
            "body{font-family:sans-serif;max-width:60em;margin:2em auto}img{max-width:100%}"
            "pre{background:#f6f6f6;padding:1em;overflow-x:auto}</style></head><body>"
            f"<h1>proxyreward report</h1><p>Lake {html.escape(str(lake.root))}, "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC.</p>"
            f"<h2>Per iteration</h2><pre>{html.escape(render(summary))}</pre>"
            "<h2>Each reward's mean and variance per iteration (the paper's Table 5)</h2>"
            f"<pre>{html.escape(render(table5, max_rows=500))}</pre>{sections}"
            f"<h2>Lineage (is every stage built on what the lake holds now?)</h2>"
            f"<pre>{html.escape(render(lineage))}</pre></body></html>")
    path = out_dir / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def report(out: Path | None = None, lake: str | None = None) -> Path:
    """Write the HTML report (per-iteration summary, each reward's mean and variance, score distributions,
    variance and the selection cut, evaluation per iteration by each judge, training curves, length against
    score, the stages' lineage) and print its path.

    Args:
        out: output folder (default: <lake>/report).
        lake: lake root (default: PROXYREWARD_LAKE or the repository's datalake/).
    """
    path = write_report(Lake(lake), out)
    print(path)
    return path
