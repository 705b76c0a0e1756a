"""What K seeds per trial cost: one CartPole-v1 trial training K = 1, 5, 10 agents side by side
(`sweep.seeds_per_trial`), against five one-seed trials run by Tune, side by side in one run.

Every run trains each agent for the same env steps (no target stop: `stop.env_steps` only, evaluation
every iteration as the shipped experiment does) with the shipped experiment's settings.

- K agents in one trial: `rlsweep train experiments/cartpole_ppo.yaml --seeds K` as a user runs it.
  Trial wall time = its `Tuner.fit()` (from the driver's timeline, $RLSWEEP_TIMELINE: the trial actor's
  start and setup, training, checkpoints, its MLflow run closed), what a sweep pays per trial;
  training time = Tune's time_total_s of the trial (its step() times only); process time = from
  launching the command to its exit (Python, Ray's start and shutdown included).
- Five one-seed trials run by Tune: one Tune run (in this process) of five trials of the same
  experiment on seeds 0..4, as many at once as the machine's CPUs hold (one CPU per trial, as the
  shipped experiment asks), through rlsweep's own trainable. Wall time = `Tuner.fit()`.

Writes the raw table to BENCHMARKS.md (between the markers) and prints it.

    python benchmarks/seeds_cost.py [--env-steps 20480] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform as stdlib_platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import markers, write_section

ROOT = Path(__file__).resolve().parents[1]
MARK_BEGIN, MARK_END = markers("seeds-cost")
EXPERIMENT = "experiments/cartpole_ppo.yaml"


def overrides(env_steps: int, results: Path) -> list[str]:
    return [f"stop.env_steps={env_steps}", "stop.target_return=null", "sweep.metric=eval_return_mean",
            "sweep.mode=max", "sweep.confirm=null", f"results_dir={results}", f"tracking.local_dir={results}"]


def run_k(k: int, env_steps: int) -> dict:
    exe = ROOT / ".venv/bin/rlsweep"
    with tempfile.TemporaryDirectory() as d:
        cmd = [str(exe) if exe.exists() else "rlsweep", "train", EXPERIMENT, "--seeds", str(k)]
        for o in overrides(env_steps, Path(d)):
            cmd += ["--set", o]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True,
                              env={**os.environ, "RLSWEEP_TIMELINE": "1"})
        process_s = time.perf_counter() - t0
        out = done.stdout
        moments = json.loads(re.search(r"^rlsweep-timeline (.+)$", done.stderr, re.M).group(1))
        trial_dir = Path(re.search(r"^trial dir:\s+(.+)$", out, re.M).group(1))
        rows = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
    last = rows[-1]
    return {"train_s": last["time_total_s"], "process_s": process_s, "env_steps": last["env_steps"],
            "trial_s": moments["fit_done"] - moments["fit_starting"],
            "sample_s": sum(r["time_sample_s"] for r in rows), "learn_s": sum(r["time_learn_s"] for r in rows),
            "eval_s": sum(r["time_eval_s"] for r in rows)}


def run_five_trials(env_steps: int) -> dict:
    sys.path.insert(0, str(ROOT / "platform"))
    import ray
    from ray import tune

    from rlsweep.config import load_experiment
    from rlsweep.tuning.trainable import trainable_for

    with tempfile.TemporaryDirectory() as d:
        cfg = load_experiment(ROOT / EXPERIMENT, overrides(env_steps, Path(d)))
        space = cfg.model_dump(mode="json")
        space["seed"] = tune.grid_search([0, 1, 2, 3, 4])
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        try:
            tuner = tune.Tuner(trainable_for(), param_space=space,
                               run_config=tune.RunConfig(storage_path=d, name="five", verbose=0,
                                                         stop={"env_steps": env_steps}))
            t0 = time.perf_counter()
            results = tuner.fit()
            wall = time.perf_counter() - t0
        finally:
            ray.shutdown()
    train = [r.metrics["time_total_s"] for r in results]
    return {"wall_s": wall, "train_s_each": train, "env_steps": [r.metrics["env_steps"] for r in results]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--env-steps", type=int, default=20480, help="env steps per agent (20 iterations of 1024)")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    ks = (1, 5, 10)
    runs: dict[int, list[dict]] = {k: [] for k in ks}
    five: list[dict] = []
    for _ in range(args.repeats):  # interleaved, so that drift in the machine hits every setting alike
        for k in ks:
            runs[k].append(run_k(k, args.env_steps))
        five.append(run_five_trials(args.env_steps))

    med = {k: statistics.median(r["train_s"] for r in runs[k]) for k in ks}
    wall = {k: statistics.median(r["trial_s"] for r in runs[k]) for k in ks}
    lines = [MARK_BEGIN, "",
             f"Run {time.strftime('%Y-%m-%d %H:%M')} on {stdlib_platform.machine()}, {os.cpu_count()} CPUs: "
             f"`python benchmarks/seeds_cost.py --env-steps {args.env_steps} --repeats {args.repeats}`. "
             f"Each agent trains {args.env_steps} env steps of the shipped CartPole experiment (evaluation every "
             "iteration, 10 episodes per agent), no target stop.", "",
             "| run | trial wall s (each repeat) | training s (each repeat) | process s (each repeat) | "
             "sample / learn / eval s (median) | vs one seed: trial wall (median) | vs one seed: training (median) |",
             "|---|---|---|---|---|---|---|"]
    for k in ks:
        r = runs[k]
        split = " / ".join(f"{statistics.median(x[key] for x in r):.2f}" for key in ("sample_s", "learn_s", "eval_s"))
        train = ", ".join(f"{x['train_s']:.2f}" for x in r)
        process = ", ".join(f"{x['process_s']:.2f}" for x in r)
        trial = ", ".join(f"{x['trial_s']:.2f}" for x in r)
        lines.append(f"| rlsweep, one trial, K = {k} | {trial} | {train} | {process} | {split} | "
                     f"{wall[k] / wall[1]:.2f}x | {med[k] / med[1]:.2f}x |")
    walls = [x["wall_s"] for x in five]
    each = "; ".join(", ".join(f"{t:.2f}" for t in x["train_s_each"]) for x in five)
    fits = ", ".join(f"{w:.2f}" for w in walls)
    lines.append(f"| Tune, five one-seed trials ({os.cpu_count()} at once) | Tuner.fit: {fits} | each trial: {each} | "
                 f"- | - | {statistics.median(walls) / wall[1]:.2f}x | - |")
    lines += ["", f"Goal: K = 5 costs at most 2x one seed, in a trial's wall time. Measured: {wall[5] / wall[1]:.2f}x "
              f"({'met' if wall[5] <= 2 * wall[1] else 'not met'}); in training time alone (step() only, without "
              f"the trial's start-up and checkpoints, which K does not multiply) {med[5] / med[1]:.2f}x.", "", MARK_END]
    block = "\n".join(lines)
    write_section("seeds-cost", "Seeds per trial: what K agents in one trial cost", block)
    print(block)


if __name__ == "__main__":
    main()
