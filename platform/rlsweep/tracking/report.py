"""The sweep's summary on its parent MLflow run: best config, results table, plots."""

from __future__ import annotations

import csv
import math
import tempfile
from pathlib import Path
from typing import Any

import yaml

from rlsweep import metrics as M
from rlsweep.config import flatten
from rlsweep.ranking import better, rank, sweep_rows
from rlsweep.tracking.runs import TAG_BEST_RUN, TAG_BEST_TRIAL, TAG_STATUS, run_config_dict
from rlsweep.tracking.tracker import Tracker

TOP_CURVES = 5


def best_config_yaml(row: dict[str, Any], sweep: str, metric: str) -> str:
    """The best trial's config (a ranked row) as an experiment file `rlsweep train` runs as is."""
    exp = run_config_dict(row["config"])
    # its runs go to the sweep's MLflow experiment, next to the trials, named apart from them
    exp["tracking"]["experiment"] = exp["tracking"].get("experiment") or exp["name"]
    exp["name"] = f"{sweep}-best"
    return (f"# best trial {row['trial_id']} of sweep {sweep}: {metric} = {row[metric]}\n"
            + yaml.safe_dump(exp, sort_keys=False))


def warm_up() -> None:
    """Import what the summary needs (matplotlib; Optuna's fANOVA pulls in scikit-learn: seconds),
    so that the tracker can do it on a thread while the trials run, not after them."""
    _figure_module()
    import optuna.importance  # noqa: F401


def sweep_summary(tracker: Tracker, parent_run_id: str, run_dir: str, runs: dict[str, str | None], *,
                  metric: str, mode: str, params: list[str], name: str,
                  study: tuple[str, str] | None = None) -> dict[str, Any] | None:
    """Writes results.csv, best_config.yaml and the PNG plots to the parent run; returns the best row.

    Args:
        run_dir: the sweep directory, whose trials are the rows (`ranking.sweep_rows`).
        runs: trial id -> its MLflow run id (for its status and learning curve).
        study: the Optuna (storage URL, study name), for parameter importance.
    """
    rows = []
    for row in sweep_rows(run_dir):
        flat = flatten(row["config"])
        run_id = runs.get(row["trial_id"])
        rows.append({
            "trial_id": row["trial_id"], "status": tracker.tags(run_id).get(TAG_STATUS, "") if run_id else "",
            metric: row.get(metric, math.nan), M.ENV_STEPS: row.get(M.ENV_STEPS), M.TIME_TOTAL_S: row.get(M.TIME_TOTAL_S),
            **{p: flat.get(p) for p in params}, "mlflow_run_id": run_id, "config": row["config"],
        })
    ranked = rank(rows, metric, mode)
    with tempfile.TemporaryDirectory() as d:
        out = Path(d)
        with open(out / "results.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != "config"] if rows else ["trial_id"])
            w.writeheader()
            for row in rows:
                w.writerow({k: v for k, v in row.items() if k != "config"})
        if ranked:
            (out / "best_config.yaml").write_text(best_config_yaml(ranked[0], name, metric))
        _plot_history(rows, metric, mode, out / "optimization_history.png")
        _plot_importance(load_study(*study) if study else None, out / "param_importance.png")
        _plot_curves(tracker, ranked[:TOP_CURVES], metric, out / "learning_curves.png")
        tracker.log_artifacts(parent_run_id, out)
    if ranked:
        best = ranked[0]
        tracker.log_metrics(parent_run_id, {f"best_{metric}": best[metric]}, step=0)
        tracker.set_tag(parent_run_id, TAG_BEST_TRIAL, best["trial_id"])
        if best["mlflow_run_id"]:
            tracker.set_tag(parent_run_id, TAG_BEST_RUN, best["mlflow_run_id"])
        return best
    return None


def load_study(storage: str, name: str) -> Any:
    """The Optuna study, or None where there is none yet or its storage cannot be opened."""
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=storage)
    except Exception:  # no study yet, or a storage that cannot be opened: the report goes without it
        return None


def _figure_module() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure():
    plt = _figure_module()
    return plt, *plt.subplots(figsize=(8, 4.5), dpi=100)


def _plot_history(rows: list[dict[str, Any]], metric: str, mode: str, path: Path) -> None:
    plt, fig, ax = _figure()
    xs, ys, best, best_line = [], [], None, []
    for i, r in enumerate(rows):
        v = r[metric]
        if isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(i)
            ys.append(v)
            best = v if best is None or better(v, best, mode) else best
        best_line.append(best if best is not None else math.nan)
    ax.scatter(xs, ys, label=f"trial {metric}")
    ax.plot(range(len(rows)), best_line, color="C1", label="best so far")
    ax.set_xlabel("trial (in start order)")
    ax.set_ylabel(metric)
    ax.set_title("Optimisation history")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_importance(study: Any, path: Path) -> None:
    plt, fig, ax = _figure()
    importances: dict[str, float] = {}
    note = ""
    if study is not None:
        try:
            import optuna

            importances = optuna.importance.get_param_importances(study)
        except Exception as e:  # too few or too uniform completed trials
            note = f"not available: {e}"
    else:
        note = "no study"
    if importances:
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names])
        ax.set_xlabel("importance (fANOVA)")
    else:
        ax.text(0.5, 0.5, f"Parameter importance {note}", ha="center", va="center", wrap=True)
        ax.set_axis_off()
    ax.set_title("Parameter importance")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_curves(tracker: Tracker, top: list[dict[str, Any]], metric: str, path: Path) -> None:
    plt, fig, ax = _figure()
    for row in top:
        if not row["mlflow_run_id"]:
            continue
        hist = tracker.history(row["mlflow_run_id"], metric)
        ax.plot([s for s, _ in hist], [v for _, v in hist], label=f"{row['trial_id']} ({row[metric]:.4g})")
    ax.set_xlabel(M.ENV_STEPS)
    ax.set_ylabel(metric)
    ax.set_title(f"Learning curves of the top {len(top)} trials")
    if top:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
