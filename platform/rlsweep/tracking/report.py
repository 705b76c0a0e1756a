"""The sweep's summary on its parent MLflow run: best config, results table, plots."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from rlsweep import metrics as M
from rlsweep.config import first_line, flatten
from rlsweep.engine.schedules import replayed
from rlsweep.ranking import CONFIRMED, better, checkpoint_of, rank, sweep_rows
from rlsweep.tracking.runs import (
    TAG_BEST_RUN,
    TAG_BEST_TRIAL,
    TAG_DESCRIPTION,
    TAG_STATUS,
    TAG_VIDEO,
    run_config_dict,
    trial_run_name,
)
from rlsweep.tracking.tracker import Tracker
from rlsweep.tuning.bucket import folder_of

log = logging.getLogger(__name__)


def best_config_yaml(row: dict[str, Any], sweep: str, metric: str) -> str:
    """The best trial's config (a ranked row) as an experiment file `rlsweep train` runs as is."""
    exp = run_config_dict(replayed(row["config"], row.get(M.HP_HISTORY)))
    # its runs go to the sweep's MLflow experiment, next to the trials, named apart from them
    exp["tracking"]["experiment"] = exp["tracking"].get("experiment") or exp["name"]
    exp["name"] = f"{sweep}-best"
    number = row.get("number", row.get("trial"))
    confirmed = row.get(CONFIRMED + metric)
    also = "" if confirmed is None else \
        f"; confirmed on fresh seeds (trial {row.get(CONFIRMED + 'trial_id')}): {metric} = {confirmed}"
    schedules = exp.pop("schedules", None) or {}
    text = (f"# best trial {number} (trial id {row['trial_id']}) of sweep {sweep}: {metric} = {row[metric]}{also}\n"
            + yaml.safe_dump(exp, sort_keys=False))
    if schedules:  # one line per key: [[env step, value from there on], ...] (JSON is YAML)
        text += ("# the values it trained with over its run (PBT's perturbations), from each env step on\n"
                 "schedules:\n" + "".join(f"  {key}: {json.dumps(points)}\n" for key, points in schedules.items()))
    return text


def confirmation_summary(tracker: Tracker, parent_run_id: str, run_dir: str, *, metric: str, mode: str) -> None:
    """The confirmation round on the parent run: confirmation.csv (each confirmed configuration's search
    score against its confirmed score, with their intervals), a plot of the two, the winner's confirmed
    score as `confirmed_<metric>`, and `search_optimism`: the median of how much better the search
    scored the confirmed configurations than their fresh seeds did (the sweep's optimism)."""
    rows = [r for r in rank(sweep_rows(folder_of(run_dir)), metric, mode)
            if isinstance(r.get(CONFIRMED + metric), (int, float)) and math.isfinite(r[CONFIRMED + metric])]
    if not rows:
        return
    sign = 1.0 if mode == "max" else -1.0
    table = []
    for place, r in enumerate(rows, 1):
        entry = {"rank": place, "trial": r["number"], "trial_id": r["trial_id"], f"search_{metric}": r[metric]}
        for x in M.SCORE_SUFFIXES[:2]:
            entry[f"search_{metric}{x}"] = r.get(metric + x, "")
        entry[CONFIRMED + metric] = r[CONFIRMED + metric]
        for x in M.SCORE_SUFFIXES[:2]:
            entry[f"{CONFIRMED}{metric}{x}"] = r.get(f"{CONFIRMED}{metric}{x}", "")
        entry["optimism"] = sign * (r[metric] - r[CONFIRMED + metric])
        entry["confirmation_trial_id"] = r.get(CONFIRMED + "trial_id")
        table.append(entry)
    with tempfile.TemporaryDirectory() as d:
        out = Path(d)
        with open(out / "confirmation.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(table[0]))
            w.writeheader()
            w.writerows(table)
        _plot_confirmation(table, metric, out / "search_vs_confirmed.png")
        tracker.log_artifacts(parent_run_id, out)
    optimism = sorted(e["optimism"] for e in table)
    middle = len(optimism) // 2
    median = optimism[middle] if len(optimism) % 2 else (optimism[middle - 1] + optimism[middle]) / 2
    tracker.log_metrics(parent_run_id, {CONFIRMED + metric: rows[0][CONFIRMED + metric], "search_optimism": median},
                        step=0)


def warm_up() -> None:
    """Import what the summary needs (matplotlib; Optuna's fANOVA pulls in scikit-learn: seconds),
    so that the tracker can do it on a thread while the trials run, not after them."""
    _figure_module()
    import optuna.importance  # noqa: F401


# a row's keys that results.csv leaves out (best_config.yaml has the config, and a PBT winner's values over its run)
_NOT_IN_TABLE = ("config", "checkpoint", M.HP_HISTORY)
VIDEO = "winner.gif"


@contextlib.contextmanager
def winner_video(tracker: Tracker, parent_run_id: str, checkpoint: str | None) -> Iterator[None]:
    """winner.gif on the parent run: the winner's deterministic episode (`engine.video`), recorded in a
    child process while the `with` block runs (the model is built meanwhile) and logged when it ends;
    when there is none (an env that cannot render), the reason as the parent's `rlsweep.video` tag and a
    warning. Never fails the sweep."""
    if not checkpoint:
        yield
        return
    from rlsweep.engine.video import Recording

    with tempfile.TemporaryDirectory(prefix="rlsweep-video-") as d:
        recording = None
        try:
            recording = Recording(checkpoint, Path(d) / VIDEO)
        except Exception as e:  # noqa: BLE001 - the video is a courtesy on top of the finished sweep
            log.warning("no video of the winner: %s", first_line(e))
        if recording is None:
            yield
            return
        try:
            yield
        except BaseException:
            recording.cancel()
            raise
        try:
            got = recording.result()
            if isinstance(got, str):
                log.warning("%s (the winner's checkpoint %s)", got, checkpoint)
                tracker.set_tag(parent_run_id, TAG_VIDEO, got)
            else:
                tracker.log_artifacts(parent_run_id, d)
                tracker.set_tag(parent_run_id, TAG_VIDEO, f"{VIDEO}: {got.describe().removeprefix(got.path + ' ')}")
        except Exception as e:  # noqa: BLE001 - the video is a courtesy on top of the finished sweep
            log.warning("no video of the winner: %s", first_line(e))


def sweep_summary(tracker: Tracker, parent_run_id: str, run_dir: str, runs: dict[str, str | None], *,
                  metric: str, mode: str, params: list[str], name: str,
                  study: tuple[str, str] | None = None, target: float | None = None) -> dict[str, Any] | None:
    """Writes results.csv (best first), best_config.yaml and the PNG plots to the parent run; returns the
    best row.

    Args:
        run_dir: the sweep directory, whose trials are the rows (`ranking.sweep_rows`).
        runs: trial id -> its MLflow run id (for its status and learning curve).
        study: the Optuna (storage URL, study name), for parameter importance.
        target: the experiment's `stop.target_return`, drawn on the learning curves.
    """
    rows, confirmation_seeds = [], []
    for row in sweep_rows(folder_of(run_dir)):
        confirmation_seeds += row.get(CONFIRMED + "seeds") or []
        flat = flatten(row["config"])
        run_id = runs.get(row["trial_id"])
        rows.append({
            "trial": row["number"], "trial_id": row["trial_id"],
            "status": tracker.tags(run_id).get(TAG_STATUS, "") if run_id else "",
            metric: row.get(metric, math.nan),
            **{metric + x: row[metric + x] for x in M.SCORE_SUFFIXES if metric + x in row},  # several seeds
            **{k: row[k] for k in (CONFIRMED + metric, *(CONFIRMED + metric + x for x in M.SCORE_SUFFIXES),
                                   CONFIRMED + "trial_id") if k in row},  # its confirmation round
            M.ENV_STEPS: row.get(M.ENV_STEPS), M.TIME_TOTAL_S: row.get(M.TIME_TOTAL_S),
            **{p: flat.get(p) for p in params}, "mlflow_run_id": run_id, "config": row["config"],
            "checkpoint": checkpoint_of(row), M.HP_HISTORY: row.get(M.HP_HISTORY),
        })
    ranked = rank(rows, metric, mode)
    with tempfile.TemporaryDirectory() as d:
        out = Path(d)
        with open(out / "results.csv", "w", newline="") as f:  # ranked; then the trials without the metric
            fields = ["rank", *dict.fromkeys(k for row in rows for k in row if k not in _NOT_IN_TABLE)]
            w = csv.DictWriter(f, fieldnames=fields, restval="")
            w.writeheader()
            placed = {id(r) for r in ranked}
            unranked = [row for row in rows if id(row) not in placed]
            for place, row in enumerate([*ranked, *unranked], 1):
                w.writerow({"rank": place if place <= len(ranked) else "",
                            **{k: v for k, v in row.items() if k not in _NOT_IN_TABLE}})
        if ranked:
            (out / "best_config.yaml").write_text(best_config_yaml(ranked[0], name, metric))
        (out / CHECKLIST).write_text(checklist(rows, ranked, metric, tracker.params(parent_run_id), name, run_dir,
                                               params, confirmation_seeds))
        _plot_history(rows, metric, mode, out / "optimization_history.png")
        _plot_importance(load_study(*study) if study else None, len(ranked), out / "param_importance.png")
        _plot_curves(curve_series(tracker, ranked, metric), target, out / "learning_curves.png")
        tracker.log_artifacts(parent_run_id, out)
    tracker.set_tag(parent_run_id, TAG_DESCRIPTION, answer(ranked, metric, params, name))
    if ranked:
        best = ranked[0]
        # the parent's own metrics are named best_*, so that it never sorts among its trials
        tracker.log_metrics(parent_run_id, {f"best_{metric}": best[metric],
                                            f"best_{M.ENV_STEPS}": float(best.get(M.ENV_STEPS) or 0)}, step=0)
        tracker.set_tag(parent_run_id, TAG_BEST_TRIAL, best["trial_id"])
        if best["mlflow_run_id"]:
            tracker.set_tag(parent_run_id, TAG_BEST_RUN, best["mlflow_run_id"])
        return best
    return None


CHECKLIST = "reproducibility.md"


def _ranges(values: list[int]) -> str:
    """`0-3, 7, 1000000-1000007` for a list of seeds."""
    out: list[str] = []
    for v in sorted(set(values)):
        if out and out[-1][1] == v - 1:
            out[-1][1] = v
        else:
            out.append([v, v])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in out) or "-"


def _seeds(config: dict[str, Any]) -> list[int]:
    first, k = int(config.get("seed", 0)), int((config.get("sweep") or {}).get("seeds_per_trial") or 1)
    return list(range(first, first + k))


def checklist(rows: list[dict[str, Any]], ranked: list[dict[str, Any]], metric: str, logged: dict[str, str],
              name: str, run_dir: str, searched: list[str], confirmation_seeds: list[int]) -> str:
    """The sweep's reproducibility checklist (Markdown): what was searched and how (space, budget,
    sampler and scheduler with their seeds), the tuning and confirmation seeds, the winner with its
    scores and the commands that rerun it, and where it ran (`provenance`)."""
    import shlex

    from rlsweep.tracking import provenance

    g = logged.get
    lines = [f"# Reproducibility checklist: sweep {name}", "", "## What was searched",
             f"- search space: {g('search_space', '?')} (keys: {', '.join(searched) or '-'})",
             f"- budget: {g('trials', '?')} trials asked, {len(rows)} started, at most {g('max_concurrent', '?')} at "
             f"once" + (f", {g('time_budget_s')} s in all" if g("time_budget_s") not in (None, "None") else ""),
             f"- sampler: {g('sampler', '?')} (seed {g('sampler_seed', '?')}); scheduler: {g('scheduler', '?')}"
             + (f" (interval {g('pbt_interval')} env steps, burn-in {g('pbt_burn_in')}, quantile "
                f"{g('pbt_quantile_fraction')}, resample probability {g('pbt_resample_probability')}; the initial "
                f"population drawn at random and explored with seed {g('sampler_seed', '?')})"
                if g("scheduler") == "pbt" else ""),
             f"- metric: {metric} ({g('mode', '?')})"]
    if rows:
        stop = rows[0]["config"].get("stop") or {}
        lines.append("- each trial's stop: " + ", ".join(f"{k}={v}" for k, v in stop.items() if v is not None))
    lines += ["", "## Seeds",
              f"- tuning seeds (the search's agents): {_ranges([s for r in rows for s in _seeds(r['config'])])}"]
    lines.append(f"- confirmation seeds (no search agent had one): {_ranges(confirmation_seeds)}"
                 if confirmation_seeds else "- confirmation seeds: none (no confirmation round)")
    lines += ["", "## The winner"]
    if ranked:
        best = ranked[0]
        flat = flatten(best["config"])
        lines += [f"- trial {best['trial']} (trial id {best['trial_id']}, MLflow run {best.get('mlflow_run_id')}): "
                  f"{metric} = {best.get(metric)}"
                  + (f", confirmed on fresh seeds = {best[CONFIRMED + metric]}" if CONFIRMED + metric in best else ""),
                  "- its searched values: " + (", ".join(f"{k}={flat.get(k)}" for k in searched) or "-")
                  + (" (its last; best_config.yaml's `schedules` holds them over its run)"
                     if g("scheduler") == "pbt" else ""),
                  f"- rerun it: `rlsweep best {shlex.quote(run_dir)} -o best.yaml && rlsweep train best.yaml` "
                  "(best_config.yaml here is that file)"]
    else:
        lines.append(f"- none: no trial reported {metric}")
    lines += ["", "## Where it ran"] + [f"- {k}: {v}" for k, v in provenance.tags().items()]
    return "\n".join(lines) + "\n"


def answer(ranked: list[dict[str, Any]], metric: str, params: list[str], sweep: str) -> str:
    """The parent run's description: the winner by name with its values and score, its margin over the
    runner-up, its confirmed score when there was a confirmation round, and where the plots are."""
    if not ranked:
        return f"Sweep {sweep}: no trial reported {metric}; nothing to recommend."

    def shown(row: dict[str, Any], key: str) -> str:
        v, low, high = row.get(key), row.get(key + "_ci_low"), row.get(key + "_ci_high")
        text = f"{v:.6g}" if isinstance(v, (int, float)) else str(v)
        return text + (f" (95% interval {low:.6g} to {high:.6g})" if isinstance(low, (int, float)) and
                       isinstance(high, (int, float)) else "")

    best = ranked[0]
    key = CONFIRMED + metric if isinstance(best.get(CONFIRMED + metric), (int, float)) else metric
    lines = [f"**Winner: trial {trial_run_name(best['trial'], best['config'], params)}**, {metric} {shown(best, metric)}"
             f" in the search."]
    if key != metric:
        lines.append(f"Confirmed on fresh seeds: {shown(best, key)}.")
    if len(ranked) > 1:
        second = ranked[1]
        a, b = best.get(key), second.get(key)
        margin = f"by {abs(a - b):.6g} " if isinstance(a, (int, float)) and isinstance(b, (int, float)) else ""
        lines.append(f"It leads the runner-up, trial {second['trial']} ({shown(second, key)}), {margin}"
                     f"({'confirmed' if key != metric else 'search'} scores).")
    lines.append("Plots (Artifacts): learning_curves.png, optimization_history.png, param_importance.png"
                 + (", search_vs_confirmed.png" if key != metric else "")
                 + "; every trial ranked in results.csv; the winner's experiment in best_config.yaml; how to "
                 f"reproduce it in {CHECKLIST}.")
    return "\n\n".join(lines)


def load_study(storage: str, name: str) -> Any:
    """The Optuna study, or None where there is none yet or its storage cannot be opened."""
    import optuna

    from rlsweep.tuning.bucket import relocate

    try:  # (a sweep resumed on another machine: its study there)
        return optuna.load_study(study_name=name, storage=relocate(storage))
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
    numbers = [int(r["trial"]) if str(r["trial"]).isdigit() else i + 1 for i, r in enumerate(rows)]
    for number, r in zip(numbers, rows, strict=True):
        v = r[metric]
        if isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(number)
            ys.append(v)
            best = v if best is None or better(v, best, mode) else best
        best_line.append(best if best is not None else math.nan)
    ax.scatter(xs, ys, label=f"trial {metric}")
    ax.step(numbers, best_line, where="post", color="C1", label="best so far")
    ax.set_xlabel("trial (its number: the MLflow run name's)")
    ax.set_ylabel(metric)
    ax.set_title("Optimisation history")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


FEW_TRIALS = 10  # below this, fANOVA's importances say little


def _plot_importance(study: Any, trials: int, path: Path) -> None:
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
    ax.set_title("Parameter importance" + (f" (only {trials} trials: a rough guide)" if importances and trials < FEW_TRIALS
                                           else ""))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def curve_series(tracker: Tracker, ranked: list[dict[str, Any]], metric: str) -> list[tuple[str, list[int], list[float]]]:
    """What learning_curves.png draws, best trial first: per trial with a run, (its legend: number and
    score, its env steps, its deterministic evaluation return at each of them)."""
    series = []
    for row in ranked:
        if not row["mlflow_run_id"]:
            continue
        hist = tracker.history(row["mlflow_run_id"], M.EVAL_RETURN_MEAN)
        score = row[metric]
        label = f"{row['trial']} ({metric} {score:.4g})" if isinstance(score, (int, float)) else str(row["trial"])
        series.append((label, [s for s, _ in hist], [v for _, v in hist]))
    return series


def _plot_curves(series: list[tuple[str, list[int], list[float]]], target: float | None, path: Path) -> None:
    plt, fig, ax = _figure()
    cmap = plt.get_cmap("tab20")
    for i, (label, steps, values) in enumerate(series):  # the best (first) on top, thicker
        best = i == 0
        ax.plot(steps, values, label=label + (" best" if best else ""), color=cmap(i % 20),
                linewidth=2.2 if best else 1.0, zorder=3 if best else 2)
    if target is not None:
        ax.axhline(target, color="grey", linestyle="--", label=f"target {target:g}")
    ax.set_xlabel(M.ENV_STEPS)
    ax.set_ylabel(f"{M.EVAL_RETURN_MEAN} (deterministic evaluation)")
    ax.set_title(f"Learning curves of the {len(series)} trials (legend: trial, score; best first)")
    if series or target is not None:
        ax.legend(fontsize=7, ncol=2 if len(series) > 10 else 1)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_confirmation(table: list[dict[str, Any]], metric: str, path: Path) -> None:
    plt, fig, ax = _figure()

    def errors(prefix: str) -> list[list[float]]:
        lows, highs = [], []
        for e in table:
            v, lo, hi = e[prefix + metric], e[f"{prefix}{metric}_ci_low"], e[f"{prefix}{metric}_ci_high"]
            lows.append(v - lo if lo != "" else 0.0)
            highs.append(hi - v if hi != "" else 0.0)
        return [lows, highs]

    xs, ys = [e[f"search_{metric}"] for e in table], [e[CONFIRMED + metric] for e in table]
    ax.errorbar(xs, ys, xerr=errors("search_"), yerr=errors(CONFIRMED), fmt="o", capsize=3)
    for e, x, y in zip(table, xs, ys, strict=True):
        ax.annotate(f"{e['trial']}", (x, y), textcoords="offset points", xytext=(4, 4))
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()  # across the whole plot, intervals included
    lo, hi = min(x0, y0), max(x1, y1)
    ax.plot([lo, hi], [lo, hi], color="grey", linestyle="--", label="confirmed = search")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel(f"search {metric} (IQM, 95% interval)")
    ax.set_ylabel(f"confirmed {metric} on fresh seeds")
    ax.set_title("Search score against confirmed score")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
