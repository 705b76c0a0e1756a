"""Winners that hold up: sweeps of the shipped CartPole experiment in two modes, at the same wall-clock
budget, and every configuration they tried scored again on test seeds no sweep used.

- "seeds + confirmation": the shipped experiment as is (`sweep.seeds_per_trial` 4, the best 3
  confirmed on 8 fresh seeds): `rlsweep sweep experiments/cartpole_ppo.yaml` with sampler seed S.
- "one seed per trial": the same sweep with `sweep.seeds_per_trial=1`, no confirmation round, as many
  trials as fit in the wall-clock time the first mode took on the same sampler seed
  (`sweep.time_budget_s` = that time less the command's fixed start-up and summary, measured here).

Test score of a configuration: it trains 10 agents on seeds 7,000,000..7,000,009 (search agents use
0-3, confirmation agents 1,000,000-1,000,007) for at most the experiment's budget, and scores the IQM of
their env steps to the target (the sweep's own metric). For each mode: how often the sweep's winner is
in the top quartile, by test score, of the configurations that sweep tried (all of them, or for a sweep
of many trials a seeded random sample of them: `--sample`), and the median gap between
the winner's search score and its test score. Raw per-sweep numbers go to BENCHMARKS.md too.

Results are kept in benchmarks/out/holdup.json as they come (a rerun picks up where it stopped).

    python benchmarks/seeds_holdup.py [--sweeps 10] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform as stdlib_platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from report import markers, write_section

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))
OUT = ROOT / "benchmarks" / "out" / "holdup.json"
WORK = Path(os.environ.get("HOLDUP_DIR", "/tmp/rlsweep-holdup"))
EXPERIMENT, SPACE = "experiments/cartpole_ppo.yaml", "search_spaces/ppo_core.yaml"
METRIC, MODE = "env_steps_to_target", "min"
TEST_SEED, TEST_SEEDS = 7_000_000, 10
MARK_BEGIN, MARK_END = markers("seeds-holdup")


def load() -> dict:
    return json.loads(OUT.read_text()) if OUT.exists() else {"sweeps": {}, "scores": {}}


def save(state: dict) -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(OUT)


def sweep(name: str, sampler_seed: int, extra: list[str]) -> dict:
    """Runs one sweep as a user does; its wall time, the configurations it tried and its winner."""
    from rlsweep.ranking import ranked_rows, sweep_rows

    d = WORK / name
    d.mkdir(parents=True, exist_ok=True)
    exe = ROOT / ".venv/bin/rlsweep"
    cmd = [str(exe) if exe.exists() else "rlsweep", "sweep", EXPERIMENT, "--space", SPACE, "--name", name,
           "--set", f"sweep.seed={sampler_seed}", "--set", f"results_dir={d}", "--set", f"tracking.local_dir={d}"]
    for o in extra:
        cmd += ["--set", o]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    rows = sweep_rows(d / name)
    [winner] = ranked_rows(d / name, METRIC, MODE)[:1]
    return {"wall_s": wall, "trials": len(rows),
            "configs": {r["trial_id"]: r["config"] for r in rows},
            "search": {r["trial_id"]: r.get(METRIC) for r in rows},
            "winner": winner["trial_id"], "winner_search": winner[METRIC],
            "winner_confirmed": winner.get("confirmed_" + METRIC)}


def test_score(config: dict) -> dict:
    """The configuration's agents on the test seeds, trained in this process until every one reached the
    target or the budget is spent: the IQM of their env steps to the target, and each."""
    import numpy as np

    from rlsweep import scores
    from rlsweep.config import validate
    from rlsweep.engine.training import Training
    from rlsweep.engine.workers import make_workers

    c = json.loads(json.dumps(config))
    c["seed"] = TEST_SEED
    c["sweep"] = {**c["sweep"], "seeds_per_trial": TEST_SEEDS, "confirm": None}
    c["rollouts"] = {**c["rollouts"], "num_rollout_workers": 0}
    cfg = validate(c)
    training = Training(cfg, make_workers(cfg))
    try:
        while training.env_steps < cfg.stop.env_steps and any(r is None for r in training.reached):
            training.iterate()
        steps = training.target_metrics()[METRIC]
    finally:
        training.close()
    return {"iqm": scores.iqm(np.asarray(steps)), "each": steps}


def scored_trials(v: dict, sample: int) -> list[str]:
    """The trials of a sweep scored on the test seeds: its winner and, of the others, all of them or a
    seeded random sample of `sample` (a sweep of many one-seed trials), whose test scores place the
    winner among them."""
    import random

    others = sorted(t for t in v["configs"] if t != v["winner"])
    if sample and len(others) > sample:
        others = sorted(random.Random(f"{v['winner']}").sample(others, sample))
    return [v["winner"], *others]


def key(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


def report(state: dict, args: argparse.Namespace) -> str:
    lines = [MARK_BEGIN, "",
             f"Run {time.strftime('%Y-%m-%d %H:%M')} on {stdlib_platform.machine()}, {os.cpu_count()} CPUs: "
             f"`python benchmarks/seeds_holdup.py --sweeps {args.sweeps}`"
             f"{' (report of the sweeps fully scored so far)' if args.report_only else ''}. Metric: {METRIC} (lower is better; "
             f"the budget, 100000, when never reached). Test score: IQM over {TEST_SEEDS} test seeds from {TEST_SEED}. "
             + ("Every configuration of a sweep is scored." if not args.sample else
                f"A sweep's winner is placed among its other configurations, all of them or (a sweep of more) "
                f"a seeded random sample of {args.sample}: its quartile is estimated from that sample."),
             "", "| mode | sweeps | trials per sweep (median) | wall s per sweep (median) | winner in its sweep's top "
             "quartile on test seeds | winner's test score (median) | median gap, winner's test - search score | "
             "median gap, test - confirmed |",
             "|---|---|---|---|---|---|---|---|"]
    raw = ["", "Per sweep (sampler seed: trials, wall s, winner's search / confirmed / test score, its test rank "
           "among the sweep's configurations):", ""]
    for mode in ("one", "robust"):
        done = [(s, v) for s, v in sorted(state["sweeps"].items()) if s.startswith(mode + "-")]
        scored = []
        for name, v in done:
            tests = {tid: state["scores"].get(key(v["configs"][tid]), {}).get("iqm")
                     for tid in scored_trials(v, args.sample)}
            if any(t is None for t in tests.values()):
                continue
            ordered = sorted(tests.values())
            mine = tests[v["winner"]]
            rank = 1 + sum(t < mine for t in ordered)
            top_quartile = rank <= max(1, len(ordered) // 4)
            scored.append((name, v, mine, rank, len(ordered), top_quartile))
        if not scored:
            continue
        gaps = [mine - v["winner_search"] for _, v, mine, *_ in scored]
        cgaps = [mine - v["winner_confirmed"] for _, v, mine, *_ in scored if v["winner_confirmed"] is not None]
        label = "one seed per trial" if mode == "one" else "4 seeds per trial + best 3 confirmed on 8"
        lines.append(
            f"| {label} | {len(scored)} | {statistics.median(v['trials'] for _, v, *_ in scored):g} | "
            f"{statistics.median(v['wall_s'] for _, v, *_ in scored):.1f} | "
            f"{sum(t[-1] for t in scored)}/{len(scored)} | {statistics.median(t[2] for t in scored):.0f} | "
            f"{statistics.median(gaps):+.0f} | "
            f"{f'{statistics.median(cgaps):+.0f}' if cgaps else '-'} |")
        for name, v, mine, rank, n, _ in scored:
            confirmed = "-" if v["winner_confirmed"] is None else f"{v['winner_confirmed']:.0f}"
            raw.append(f"- {label}, {name}: {v['trials']} trials, {v['wall_s']:.1f} s; winner {v['winner_search']:.0f} / "
                       f"{confirmed} / {mine:.0f}, test rank {rank} of {n}")
    return "\n".join(lines + raw + ["", MARK_END])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sweeps", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2, help="test-scoring processes at once")
    ap.add_argument("--startup-s", type=float, default=12.0,
                    help="the sweep command's fixed cost outside Tune's run (Ray start, summary, exit)")
    ap.add_argument("--sample", type=int, default=11,
                    help="score the winner and at most this many of a sweep's other trials (0: all of them)")
    ap.add_argument("--report-only", action="store_true",
                    help="write the report of what benchmarks/out/holdup.json holds (sweeps whose every "
                         "configuration is scored), running nothing")
    args = ap.parse_args()
    state = load()
    if args.report_only:
        block = report(state, args)
        write_section("seeds-holdup", "Winners that hold up: one seed per trial against seeds with confirmation", block)
        print(block)
        return
    for s in range(args.sweeps):  # the sweeps first: their wall times are what the modes compare
        if f"robust-{s}" not in state["sweeps"]:
            state["sweeps"][f"robust-{s}"] = sweep(f"robust-{s}", s, [])
            save(state)
        if f"one-{s}" not in state["sweeps"]:
            budget = max(10.0, state["sweeps"][f"robust-{s}"]["wall_s"] - args.startup_s)
            state["sweeps"][f"one-{s}"] = sweep(f"one-{s}", s, ["sweep.seeds_per_trial=1", "sweep.confirm=null",
                                                                "sweep.trials=200", f"sweep.time_budget_s={budget:.1f}"])
            save(state)
        print(f"sweeps of sampler seed {s} done", flush=True)
    todo = {key(v["configs"][tid]): v["configs"][tid] for v in state["sweeps"].values()
            for tid in scored_trials(v, args.sample) if key(v["configs"][tid]) not in state["scores"]}
    print(f"scoring {len(todo)} configurations on {TEST_SEEDS} test seeds", flush=True)
    with ProcessPoolExecutor(args.workers) as pool:
        futures = {k: pool.submit(test_score, c) for k, c in todo.items()}
        for i, (k, f) in enumerate(futures.items(), 1):
            state["scores"][k] = f.result()
            if i % 5 == 0 or i == len(futures):
                save(state)
                print(f"  {i}/{len(futures)} scored", flush=True)
    block = report(state, args)
    write_section("seeds-holdup", "Winners that hold up: one seed per trial against seeds with confirmation", block)
    print(block)


if __name__ == "__main__":
    main()
