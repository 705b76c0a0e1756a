"""PBT against random search and TPE at the same env-step budget, over several sweep seeds.

Each sweep is `rlsweep sweep` as a user runs it, on a task's shipped experiment with the same search
space for every method (only values PBT may change mid-run: lr, gamma, GAE lambda, clip, entropy
coefficient), the same number of trials (PBT's population) and the same env steps per trial, so the
same total env steps. Every trial trains one seed; the metric is the deterministic evaluation's mean
return (`eval_return_mean`, higher is better). After the search the winner is confirmed on 5 fresh
seeds (`sweep.confirm`: top 1): a PBT winner's values over its run (its schedule) are trained again
from scratch, a random or TPE winner's fixed values likewise.

PBT runs synchronously (`sweep.pbt.synch`, the default): the population trains trials x env steps in
all, as the other methods do.

- final: the winner's search score (PBT: the best member at the end of the population's training).
- confirmed: the interquartile mean of the winner's 5 fresh seeds.

Results are kept in benchmarks/out/pbt.json as they come (a rerun picks up where it stopped).

    python benchmarks/pbt.py [--seeds 3] [--tasks CartPole-v1,InvertedPendulum-v5]
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
from pathlib import Path

from report import markers, write_section

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))
OUT = ROOT / "benchmarks" / "out" / "pbt.json"
WORK = Path(os.environ.get("PBT_BENCH_DIR", "/tmp/rlsweep-pbt-bench"))
METRIC, MODE = "eval_return_mean", "max"
CONFIRM_SEEDS = 5

# the space: the shipped PBT space (gamma's range per task)
SPACE = ("ppo.lr: {{type: loguniform, low: 1.0e-4, high: 3.0e-3}}\n"
         "ppo.gamma: {{type: loguniform, low: {gamma_low}, high: {gamma_high}, complement: true}}\n"
         "ppo.gae_lambda: {{type: uniform, low: 0.8, high: 0.99}}\n"
         "ppo.clip: {{type: uniform, low: 0.1, high: 0.3}}\n"
         "ppo.ent_coef: {{type: loguniform, low: 1.0e-5, high: 1.0e-2}}\n")
TASKS = {
    # (a budget short of what every setting needs to reach CartPole's 500: at 50k all of them do)
    "CartPole-v1": {"experiment": "experiments/cartpole_ppo.yaml", "trials": 8, "env_steps": 20_480,
                    "interval": 4_096, "gamma": (0.95, 0.999),
                    "extra": ["evaluation.interval=2"]},
    # MuJoCo's InvertedPendulum with the shipped Hopper experiment's PPO settings (lr not annealed: PBT sets
    # it); a budget short of what the defaults need to hold the pole for the whole 1000 steps
    "InvertedPendulum-v5": {"experiment": "experiments/hopper_ppo.yaml", "trials": 8, "env_steps": 20_480,
                            "interval": 4_096, "gamma": (0.95, 0.999),
                            "extra": ["env.id=InvertedPendulum-v5", "ppo.anneal_lr=false", "evaluation.interval=2",
                                      "ppo.minibatch_size=256"]},
}
METHODS = ("pbt", "random", "tpe")
MARK_BEGIN, MARK_END = markers("pbt")


def load() -> dict:
    return json.loads(OUT.read_text()) if OUT.exists() else {"sweeps": {}}


def save(state: dict) -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(OUT)


def overrides(task: dict, method: str, seed: int, d: Path) -> list[str]:
    out = [f"results_dir={d}", f"tracking.local_dir={d}", "tracking.log_video=false", "tracking.register_model=false",
           "stop.target_return=null", f"stop.env_steps={task['env_steps']}", f"sweep.metric={METRIC}",
           f"sweep.mode={MODE}", f"sweep.trials={task['trials']}", f"sweep.seed={seed}", "sweep.seeds_per_trial=1",
           f"sweep.confirm={{top: 1, seeds: {CONFIRM_SEEDS}}}", "rollouts.num_rollout_workers=0",
           "resources.learner_cpus=1", *task["extra"]]
    if method == "pbt":
        out += ["sweep.scheduler=pbt", f"sweep.pbt.interval={task['interval']}"]
    else:
        out += ["sweep.scheduler=fifo", f"sweep.sampler={method}", f"sweep.n_startup_trials={task['trials'] // 2}"]
    return out


def sweep(env_id: str, method: str, seed: int) -> dict:
    """One sweep as a user runs it: its wall time, its winner's final and confirmed scores, every trial's."""
    from rlsweep.ranking import CONFIRMED, ranked_rows

    task = TASKS[env_id]
    name = f"{env_id.split('-')[0].lower()}-{method}-{seed}"
    d = WORK / name
    d.mkdir(parents=True, exist_ok=True)
    space = d / "space.yaml"
    space.write_text(SPACE.format(gamma_low=task["gamma"][0], gamma_high=task["gamma"][1]))
    exe = ROOT / ".venv/bin/rlsweep"
    cmd = [str(exe) if exe.exists() else "rlsweep", "sweep", task["experiment"], "--space", str(space), "--name", name]
    for o in overrides(task, method, seed, d):
        cmd += ["--set", o]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{name}: exit {r.returncode}\n{r.stderr[-3000:]}")
    rows = ranked_rows(d / name, METRIC, MODE)
    winner = rows[0]
    clones = sum(1 for x in (d / name).glob("trial_*/result.json") if '"cloned_from"' in x.read_text())
    return {"wall_s": wall, "final": winner[METRIC], "confirmed": winner.get(CONFIRMED + METRIC),
            "trials": sorted((x[METRIC] for x in rows if x.get(METRIC) is not None), reverse=True),
            "winner_schedule": bool(json.loads(winner.get("hp_history") or "[]")[1:]) if method == "pbt" else None,
            "cloned_trials": clones}


def report(state: dict, seeds: int) -> str:
    lines = [MARK_BEGIN, "",
             f"Run {time.strftime('%Y-%m-%d %H:%M')} on {stdlib_platform.machine()}, {os.cpu_count()} CPUs: "
             f"`python benchmarks/pbt.py --seeds {seeds}`. Each sweep: the same search space for every method "
             "(lr, gamma, GAE lambda, clip, entropy coefficient), one seed per trial, the same trials (PBT's "
             "population) and env steps per trial, so the same total env steps; metric `eval_return_mean` (higher "
             f"is better). final: the winner's search score; confirmed: the IQM of the winner retrained on "
             f"{CONFIRM_SEEDS} fresh seeds (a PBT winner with its schedule of values).",
             "", "| task | method | trials x env steps | sweeps | final, median (each) | confirmed, median (each) | "
             "all trials' final, median of the sweeps' medians | wall s per sweep (median) |",
             "|---|---|---|---|---|---|---|---|"]
    raw = ["", "Per sweep (sweep seed: final / confirmed, wall s; every trial's final score, best first; PBT: "
           "trials that continued from another, and whether the winner's values changed over its run):", ""]
    for env_id, task in TASKS.items():
        for method in METHODS:
            done = [(k, v) for k, v in sorted(state["sweeps"].items()) if k.startswith(f"{env_id}/{method}/")]
            if not done:
                continue
            finals = [v["final"] for _, v in done]
            confirmed = [v["confirmed"] for _, v in done if v["confirmed"] is not None]
            lines.append(f"| {env_id} | {method} | {task['trials']} x {task['env_steps']:,} | {len(done)} | "
                         f"{statistics.median(finals):.1f} ({', '.join(f'{x:.1f}' for x in finals)}) | "
                         f"{statistics.median(confirmed):.1f} ({', '.join(f'{x:.1f}' for x in confirmed)}) | "
                         f"{statistics.median(statistics.median(v['trials']) for _, v in done):.1f} | "
                         f"{statistics.median(v['wall_s'] for _, v in done):.0f} |")
            for k, v in done:
                pbt = (f"; {v['cloned_trials']} trials continued from another, winner's values "
                       f"{'changed' if v['winner_schedule'] else 'unchanged'}") if method == "pbt" else ""
                raw.append(f"- {env_id} {method} seed {k.rsplit('/', 1)[1]}: {v['final']:.1f} / {v['confirmed']:.1f}, "
                           f"{v['wall_s']:.0f} s; trials {', '.join(f'{x:.1f}' for x in v['trials'])}{pbt}")
    return "\n".join(lines + raw + ["", MARK_END])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    state = load()
    if not args.report_only:
        for seed in range(args.seeds):  # seed by seed: a cut-short run still compares the methods
            for env_id in args.tasks.split(","):
                for method in METHODS:
                    k = f"{env_id}/{method}/{seed}"
                    if k not in state["sweeps"]:
                        state["sweeps"][k] = sweep(env_id, method, seed)
                        save(state)
                        v = state["sweeps"][k]
                        print(f"{k}: final {v['final']:.1f}, confirmed {v['confirmed']:.1f}, {v['wall_s']:.0f} s",
                              flush=True)
    block = report(state, args.seeds)
    write_section("pbt", "PBT against random search and TPE (same env-step budget)", block)
    print(block)


if __name__ == "__main__":
    main()
