"""Whole process, launch to exit: `rlsweep train` solving CartPole-v1 against a Stable-Baselines3 script
that does the same, and where rlsweep's seconds go.

- rlsweep: `rlsweep train experiments/cartpole_ppo.yaml --seed S` as a user runs it (one agent, stops
  when its deterministic evaluation reaches 475), with $RLSWEEP_TIMELINE set: at exit it prints the
  wall-clock moments of its driver (`platform/rlsweep/timeline.py`), placed against the launch.
- Stable-Baselines3: a script that imports SB3, trains PPO with rl-zoo3's tuned CartPole settings,
  evaluates every 1024 env steps the same way and stops once solved (`cartpole_time_to_solve.run_sb3`,
  in a process of its own).

The two alternate, one at a time, so neither slows the other. Writes the table to BENCHMARKS.md.

    python benchmarks/start_time.py [--seeds 0 1 2 3 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform as stdlib_platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import markers, write_section

ROOT = Path(__file__).resolve().parents[1]
MARK = "start-time"
# the driver's moments, in order (timeline.mark calls), and what the span up to each one is
PHASES = [
    ("imported", "Python start and rlsweep's imports"),
    ("ray_starting", "the experiment read and checked, the MLflow store opened"),
    ("ray_started", "Ray started (a local head: GCS, raylet, workers)"),
    ("warmed_up", "imports finished on a thread meanwhile (Tune callbacks, MLflow store)"),
    ("fit_starting", "the Tuner built"),
    ("trial_started", "the trial's actor started and set up (torch, env, learner)"),
    ("first_result", "its first iteration"),
    ("fit_done", "training to the target, and Tune's end of run"),
    ("command_done", "the closing lines"),
    ("ray_shut_down", "ray.shutdown()"),
    ("exit", "exit"),
]


def run_rlsweep(seed: int, work: Path) -> dict:
    work.mkdir(parents=True)
    exe = ROOT / ".venv/bin/rlsweep"
    cmd = [str(exe) if exe.exists() else "rlsweep", "train", "experiments/cartpole_ppo.yaml", "--seed", str(seed),
           "--set", f"results_dir={work / 'results'}", "--set", f"tracking.local_dir={work}"]
    t0 = time.time()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "RLSWEEP_TIMELINE": "1"})
    t_exit = time.time()
    if r.returncode != 0:
        raise SystemExit(f"rlsweep exited {r.returncode}:\n{r.stderr[-3000:]}")
    line = next(x for x in r.stderr.splitlines() if x.startswith("rlsweep-timeline "))
    moments = {k: v - t0 for k, v in json.loads(line.split(" ", 1)[1]).items()}
    moments["exit"] = t_exit - t0
    return {"solved": "finished: reached target return" in r.stdout, "exit_s": t_exit - t0,
            "moments": moments}


def run_sb3_script(seed: int) -> dict:
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); "
            f"from cartpole_time_to_solve import run_sb3; import json; print(json.dumps(run_sb3({seed})))")
    t0 = time.time()
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    t_exit = time.time()
    if r.returncode != 0:
        raise SystemExit(f"the SB3 script exited {r.returncode}:\n{r.stderr[-3000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return {"solved": out["solved"], "exit_s": t_exit - t0, "train_s": out["train_s"]}


def med(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = ap.parse_args()
    ours, sb3 = [], []
    with tempfile.TemporaryDirectory(prefix="start-time-") as tmp:
        for seed in args.seeds:
            ours.append(run_rlsweep(seed, Path(tmp) / str(seed)))
            sb3.append(run_sb3_script(seed))
            print(f"seed {seed}: rlsweep {ours[-1]['exit_s']:.2f} s, SB3 script {sb3[-1]['exit_s']:.2f} s", flush=True)

    import ray
    import stable_baselines3
    import torch

    ratio = statistics.median(r["exit_s"] for r in ours) / statistics.median(r["exit_s"] for r in sb3)
    lines = [
        markers(MARK)[0],
        f"Run {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} CPU cores "
        f"({stdlib_platform.processor() or stdlib_platform.machine()}), no GPU; Python {sys.version.split()[0]}, "
        f"torch {torch.__version__}, ray {ray.__version__}, stable-baselines3 {stable_baselines3.__version__}. "
        f"Command: `python benchmarks/start_time.py --seeds {' '.join(map(str, args.seeds))}`. Launch to exit, "
        "CartPole-v1 to a deterministic evaluation of 475 (one agent); the two alternate, one at a time.",
        "",
        "| seed | rlsweep solved | rlsweep launch to exit s | SB3 script solved | SB3 script launch to exit s | SB3 training s |",
        "|---|---|---|---|---|---|",
    ]
    for seed, a, b in zip(args.seeds, ours, sb3, strict=True):
        lines.append(f"| {seed} | {a['solved']} | {a['exit_s']:.2f} | {b['solved']} | {b['exit_s']:.2f} | "
                     f"{b['train_s']:.2f} |")
    lines += [
        "",
        f"Median launch to exit: rlsweep {med([r['exit_s'] for r in ours])} s, SB3 script "
        f"{med([r['exit_s'] for r in sb3])} s: **{ratio:.2f}x** (goal: at most 0.75x).",
        "",
        "Where rlsweep's seconds go (median over seeds; each span ends at the named moment of the driver):",
        "",
        "| span | ends at | median s |",
        "|---|---|---|",
    ]
    previous = None
    for name, what in PHASES:
        spans = [r["moments"][name] - (r["moments"][previous] if previous else 0.0)
                 for r in ours if name in r["moments"] and (previous is None or previous in r["moments"])]
        if spans:
            lines.append(f"| {what} | `{name}` | {med(spans)} |")
            previous = name
    lines.append(markers(MARK)[1])
    block = "\n".join(lines)
    print(block)
    if not args.no_write:
        write_section(MARK, "Start to finish: rlsweep train against a Stable-Baselines3 script", block)


if __name__ == "__main__":
    main()
