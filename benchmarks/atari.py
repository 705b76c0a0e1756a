"""Atari from pixels: rlsweep against CleanRL's ppo_atari.py and Stable-Baselines3's CnnPolicy PPO.

All three train PPO on BreakoutNoFrameskip-v4 (no sticky actions, as CleanRL's default) with
CleanRL's settings: 8 envs x 128 steps, 4 minibatches of 256, 4 epochs, lr 2.5e-4 annealed to 0,
clip 0.1 (the value too), entropy 0.01, value 0.5, grad norm 0.5, gamma 0.99, lambda 0.95, the
Nature-DQN trunk, the standard pipeline (no-op starts, frame skip 4 with max-pooling, 84x84
grayscale, 4 stacked frames, a lost life ends a training episode, FIRE to start, clipped training
rewards). Each runs as a whole process, alone on the machine, one after the other.

- rlsweep: `rlsweep train experiments/breakout_ppo.yaml` with the env id above (its own settings are
  CleanRL's), 2 rollout actors of 4 envs, torch on 2 threads; numbers from the trial's result.json.
- CleanRL: its ppo_atari.py, unmodified, from a checkout of github.com/vwxyzjn/cleanrl (--cleanrl),
  in the peers' virtualenv (`make bench-atari-venv`: the gymnasium 0.29 CleanRL pins, ale-py 0.9,
  this project's torch); torch's default threads (2 here).
- Stable-Baselines3: PPO("CnnPolicy") on make_atari_env + VecFrameStack(4), the same settings, in
  the peers' virtualenv (this script with --sb3).

Two parts: throughput (env steps per second of training, and the whole process launch to exit, one
seed) and a learning check (each learner's mean game score, unclipped whole games as each reports
them, over the games that ended in the last 10% of the budget; rlsweep also plays 8 greedy games at
the end). Raw numbers to benchmarks/out/atari.json, the table to BENCHMARKS.md, curves to
benchmarks/plots/atari.png.

    python benchmarks/atari.py --cleanrl ../cleanrl [--throughput-steps 30720] [--steps 100352] [--seeds 0 1 2]
    python benchmarks/atari.py --report-only
"""

from __future__ import annotations

import argparse
import json
import os
import platform as stdlib_platform
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from report import markers, write_section

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "atari.json"
PLOT = ROOT / "benchmarks" / "plots" / "atari.png"
PEERS = ROOT / ".venv-atari-peers" / "bin" / "python"
ENV_ID = "BreakoutNoFrameskip-v4"
NUM_ENVS, N_STEPS, BATCH = 8, 128, 1024
MARK = "atari"
LEARNERS = ("rlsweep", "cleanrl", "sb3")


# -- the three learners, each a whole process --------------------------------------------------------

def run_rlsweep(steps: int, seed: int, evaluate: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="atari-") as tmp:
        exe = ROOT / ".venv/bin/rlsweep"
        iterations = steps // BATCH
        cmd = [str(exe) if exe.exists() else "rlsweep", "train", str(ROOT / "experiments/breakout_ppo.yaml"),
               "--seed", str(seed), "--set", f"env.id={ENV_ID}", "--set", f"stop.env_steps={steps}",
               "--set", f"evaluation.interval={iterations if evaluate else 0}",
               "--set", "sweep.metric=episode_return_mean", "--set", "checkpoint_frequency=0",
               "--set", f"results_dir={tmp}/results", "--set", f"tracking.local_dir={tmp}"]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode:
            raise SystemExit(f"rlsweep exited {r.returncode}:\n{r.stderr[-3000:]}")
        trial = next(Path(line.split(":", 1)[1].strip()) for line in r.stdout.splitlines()
                     if line.startswith("trial dir:"))
        rows = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
    ended = [b["episodes"] - a["episodes"] for a, b in zip([{"episodes": 0}, *rows[:-1]], rows, strict=True)]  # (a running count)
    games = [(row["env_steps"], row["episode_return_mean"], n) for row, n in zip(rows, ended, strict=True) if n]
    return {"wall_s": wall, "train_s": rows[-1]["time_total_s"], "env_steps": rows[-1]["env_steps"],
            "games": games, "greedy": rows[-1]["eval_return_mean"] if evaluate else None}


def run_cleanrl(script: Path, steps: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="atari-") as tmp:
        cmd = [str(PEERS), str(script), "--env-id", ENV_ID, "--total-timesteps", str(steps), "--seed", str(seed)]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True,  # (its cleanrl_utils from the checkout)
                           env={**os.environ, "PYTHONPATH": str(script.parents[1])})
        wall = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"CleanRL exited {r.returncode}:\n{r.stderr[-3000:]}")
    sps = [int(x) for x in re.findall(r"^SPS: (\d+)$", r.stdout, re.M)]
    games = [(int(s), float(v), 1) for s, v in
             re.findall(r"global_step=(\d+), episodic_return=\[?([-\d.]+)\]?", r.stdout)]
    done = (steps // BATCH) * BATCH
    return {"wall_s": wall, "train_s": done / sps[-1], "env_steps": done, "games": games, "greedy": None}


def run_sb3(steps: int, seed: int) -> dict:
    t0 = time.perf_counter()
    r = subprocess.run([str(PEERS), __file__, "--sb3", str(steps), str(seed)], cwd=ROOT, capture_output=True,
                       text=True)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"SB3 exited {r.returncode}:\n{r.stderr[-3000:]}")
    return {**json.loads(r.stdout.strip().splitlines()[-1]), "wall_s": wall, "greedy": None}


def sb3_main(steps: int, seed: int) -> None:
    """The Stable-Baselines3 side (this script with --sb3, in the peers' virtualenv)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    env = VecFrameStack(make_atari_env(ENV_ID, n_envs=NUM_ENVS, seed=seed), n_stack=4)

    class Games(BaseCallback):
        def __init__(self):
            super().__init__()
            self.games = []

        def _on_step(self) -> bool:  # the Monitor under AtariWrapper: whole games, unclipped
            self.games += [(self.num_timesteps, float(i["episode"]["r"]), 1) for i in self.locals["infos"]
                           if "episode" in i]
            return True

    model = PPO("CnnPolicy", env, n_steps=N_STEPS, batch_size=256, n_epochs=4, learning_rate=lambda f: 2.5e-4 * f,
                clip_range=0.1, clip_range_vf=0.1, ent_coef=0.01, vf_coef=0.5, max_grad_norm=0.5, gamma=0.99,
                gae_lambda=0.95, seed=seed, device="cpu", verbose=0)
    games = Games()
    t0 = time.perf_counter()
    model.learn(total_timesteps=steps, callback=games)
    print(json.dumps({"train_s": time.perf_counter() - t0, "env_steps": model.num_timesteps, "games": games.games}))


# -- report ----------------------------------------------------------------------------------------

def final_score(run: dict, steps: int) -> float:
    """The mean score of the games that ended in the last 10% of the budget (each entry: env steps,
    mean score, games)."""
    late = [(v, n) for s, v, n in run["games"] if s > 0.9 * steps]
    total = sum(n for _, n in late)
    return sum(v * n for v, n in late) / total if total else float("nan")


def plot(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    steps = results["learning"]["steps"]
    grid = np.linspace(0, steps, 21)[1:]
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in LEARNERS:
        curves = []
        for run in results["learning"]["runs"][name].values():
            s = np.array([g[0] for g in run["games"]], float)
            v = np.array([g[1] for g in run["games"]], float)
            n = np.array([g[2] for g in run["games"]], float)
            curve = []
            for hi in grid:  # games ending in each twentieth of the budget
                m = (s > hi - steps / 20) & (s <= hi)
                curve.append((v[m] * n[m]).sum() / n[m].sum() if n[m].sum() else np.nan)
            curves.append(curve)
        c = np.array(curves)
        ax.plot(grid, np.nanmean(c, 0), label=name)
        ax.fill_between(grid, np.nanmin(c, 0), np.nanmax(c, 0), alpha=0.2)
    ax.set_xlabel("env steps (agent steps, frame skip 4)")
    ax.set_ylabel("game score (training games)")
    ax.set_title(f"{ENV_ID}: mean and range over {len(results['learning']['seeds'])} seeds")
    ax.legend()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=100)


def report(results: dict) -> None:
    t = results["throughput"]
    rows = ["| learner | env steps | training s | env steps/s (training) | whole process s |", "|---|---|---|---|---|"]
    for name in LEARNERS:
        r = t["runs"][name]
        rows.append(f"| {name} | {r['env_steps']:,} | {r['train_s']:.1f} | {r['env_steps'] / r['train_s']:.0f} | "
                    f"{r['wall_s']:.1f} |")
    ours = t["runs"]["rlsweep"]
    speed = {n: t["runs"][n]["env_steps"] / t["runs"][n]["train_s"] for n in LEARNERS}
    lines = [markers(MARK)[0], "",
             f"Generated by `benchmarks/atari.py` on {results['machine']}: {ENV_ID}, CleanRL's ppo_atari settings "
             "for all three (8 envs x 128 steps, 4 minibatches, 4 epochs, lr 2.5e-4 annealed, clip 0.1, entropy "
             "0.01; the Nature-DQN trunk; the standard Atari pipeline), each a whole process alone on the machine. "
             f"CleanRL: ppo_atari.py at commit {results['cleanrl_commit']}, unmodified; SB3 {results['sb3']}; both on "
             "gymnasium 0.29.1 with ale-py 0.9.1 and this project's torch.", "",
             f"**Throughput** (seed 0, {t['steps']:,} env steps): rlsweep {speed['rlsweep']:.0f} env steps/s, "
             f"{speed['rlsweep'] / speed['cleanrl']:.2f}x CleanRL's, {speed['rlsweep'] / speed['sb3']:.2f}x SB3's "
             f"(whole process {ours['wall_s']:.0f} s).", "", *rows, ""]
    if "learning" in results:
        lr = results["learning"]
        steps = lr["steps"]
        lines += [f"**Learning check** ({steps:,} env steps, seeds {', '.join(map(str, lr['seeds']))}): each learner's "
                  "mean score over the training games that ended in the last 10% of the budget (whole games, "
                  "unclipped, as each reports them); rlsweep's greedy score is its evaluation at the end (8 games).",
                  "(Its runs are not timed: the throughput above is the speed measurement.)",
                  "", "| learner | per seed | mean |", "|---|---|---|"]
        for name in LEARNERS:
            runs = lr["runs"][name]
            finals = [final_score(runs[str(s)], steps) for s in lr["seeds"]]
            lines.append(f"| {name} | {', '.join(f'{x:.1f}' for x in finals)} | {statistics.mean(finals):.1f} |")
        greedy = [lr["runs"]["rlsweep"][str(s)]["greedy"] for s in lr["seeds"]]
        lines += ["", f"rlsweep greedy (8 whole games at the end): {', '.join(f'{g:.1f}' for g in greedy)}.", "",
                  "![Breakout learning curves](benchmarks/plots/atari.png)", ""]
    lines.append(markers(MARK)[1])
    write_section(MARK, "Atari from pixels: rlsweep vs CleanRL and SB3", "\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cleanrl", type=Path, default=ROOT.parent / "cleanrl", help="a checkout of vwxyzjn/cleanrl")
    p.add_argument("--throughput-steps", type=int, default=30 * BATCH)
    p.add_argument("--steps", type=int, default=98 * BATCH, help="the learning check's budget per run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--only", choices=["throughput", "learning"])
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--sb3", nargs=2, type=int, metavar=("STEPS", "SEED"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.sb3:
        return sb3_main(*args.sb3)
    if args.report_only:
        results = json.loads(OUT.read_text())
    else:
        script = args.cleanrl / "cleanrl" / "ppo_atari.py"
        if not script.is_file() or not PEERS.exists():
            raise SystemExit(f"needs {script} (--cleanrl: a checkout of github.com/vwxyzjn/cleanrl) and the peers' "
                             "virtualenv (make bench-atari-venv)")
        commit = subprocess.run(["git", "-C", str(args.cleanrl), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip() or "unknown"
        sb3 = subprocess.run([str(PEERS), "-c", "import stable_baselines3 as s; print(s.__version__)"],
                             capture_output=True, text=True).stdout.strip()
        results = json.loads(OUT.read_text()) if OUT.exists() else {}
        results.update({"machine": f"{os.cpu_count()} CPUs, {stdlib_platform.processor() or stdlib_platform.machine()}",
                        "cleanrl_commit": commit, "sb3": sb3})
        runners = {"rlsweep": lambda n, s, e: run_rlsweep(n, s, e), "cleanrl": lambda n, s, e: run_cleanrl(script, n, s),
                   "sb3": lambda n, s, e: run_sb3(n, s)}
        if args.only in (None, "throughput"):
            results["throughput"] = {"steps": args.throughput_steps, "runs": {}}
            for name in LEARNERS:
                results["throughput"]["runs"][name] = run = runners[name](args.throughput_steps, 0, False)
                print(f"throughput {name}: {run['env_steps'] / run['train_s']:.0f} env steps/s, whole {run['wall_s']:.0f} s",
                      flush=True)
            OUT.parent.mkdir(parents=True, exist_ok=True)
            OUT.write_text(json.dumps(results))
        if args.only in (None, "learning"):
            results["learning"] = {"steps": args.steps, "seeds": args.seeds, "runs": {n: {} for n in LEARNERS}}
            for seed in args.seeds:
                for name in LEARNERS:
                    run = runners[name](args.steps, seed, True)
                    results["learning"]["runs"][name][str(seed)] = run
                    print(f"learning {name} seed {seed}: final {final_score(run, args.steps):.1f} "
                          f"({run['train_s']:.0f} s)", flush=True)
                    OUT.write_text(json.dumps(results))
    if "learning" in results:
        plot(results)
    report(results)


if __name__ == "__main__":
    main()
