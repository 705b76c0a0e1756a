"""Sweep benchmark: rlsweep vs RLlib PPO + Ray Tune + OptunaSearch, side by side in one run.

Both sweep CartPole-v1 with 16 trials, 2 at a time, over the same space (lr log-uniform 1e-4..3e-3,
gamma uniform 0.95..0.999, train batch 512/1024/2048/4096) with the same Optuna TPE settings
(seed 0, 5 startup trials, multivariate, constant liar), and the same per-trial stop: training
episode-return mean >= 475 (RLlib's own criterion: the mean over the episodes of the latest
iteration, which rlsweep's `episode_return_mean` also is) or 100k env steps. Neither side runs
evaluation episodes (the criterion does not need them). rlsweep runs its shipped CartPole
experiment as is otherwise (experiments/cartpole_ppo.yaml: 64x64 tanh actor and critic, 8 envs
sampled in the trial's own process, 128-sample minibatches, 6 epochs). RLlib runs in two
configurations (see rllib_sweep.py), each trial on one CPU: its default PPO model with 128-sample
minibatches, 6 epochs and vf_loss_coeff 0.01, and its tuned CartPole example (a [32] linear network
with shared value layers). The speed-up quoted is against the stronger of the two: the one that
solves more trials, then the faster.

Reported: the wall time of each command (process start to exit), time from process start to the
first solving trial, trials solved, and rlsweep's MLflow logging time per iteration against its
mean iteration wall time. Writes the table to BENCHMARKS.md between its markers.

    python benchmarks/sweep_vs_rllib.py      # needs .venv-rllib: make bench-rllib-venv
"""

from __future__ import annotations

import argparse
import json
import os
import platform as stdlib_platform
import subprocess
import sys
import time
from pathlib import Path

from report import markers, write_section

ROOT = Path(__file__).resolve().parents[1]
RLLIB_PY = ROOT / ".venv-rllib" / "bin" / "python"
MARK_BEGIN, MARK_END = markers("sweep-vs-rllib")
TARGET, MAX_STEPS = 475.0, 100_000


def run_rlsweep(out: Path, trials: int, concurrent: int) -> dict:
    from mlflow.tracking import MlflowClient

    from rlsweep.metrics import mlflow_key

    exe = ROOT / ".venv" / "bin" / "rlsweep"
    cmd = [str(exe) if exe.exists() else "rlsweep", "sweep", "experiments/cartpole_ppo.yaml",
           "--space", "search_spaces/ppo_core.yaml", "--trials", str(trials), "--name", "bench",
           "--set", "stop.target_return=null", "--set", f"stop.episode_return={TARGET}",
           "--set", f"stop.env_steps={MAX_STEPS}", "--set", f"sweep.max_concurrent={concurrent}",
           "--set", "sweep.metric=episode_return_mean", "--set", "sweep.mode=max", "--set", "sweep.seed=0", "--set", "sweep.n_startup_trials=5",
           "--set", "evaluation.interval=0",
           # one seed per trial and no confirmation round, as each RLlib trial is one seed
           "--set", "sweep.seeds_per_trial=1", "--set", "sweep.confirm=null",
           "--set", f"results_dir={out / 'results'}", "--set", f"tracking.local_dir={out}"]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    t_exit = time.time()
    if proc.returncode != 0:
        raise SystemExit(f"rlsweep sweep failed:\n{proc.stderr[-3000:]}")
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("cartpole_ppo")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parent = next(r for r in runs if r.data.tags.get("rlsweep.kind") == "sweep")
    children = [r for r in runs if r.data.tags.get("rlsweep.kind") == "trial"]
    solved = [r for r in children if r.data.metrics.get(mlflow_key("episode_return_mean"), 0) >= TARGET]
    trial_wall_s = sum((r.info.end_time - r.info.start_time) / 1000 for r in children)
    iterations = sum(len(client.get_metric_history(r.info.run_id, mlflow_key("time_total_s"))) for r in children)
    return {
        "process_s": t_exit - t0,
        "first_solve_from_process_s": min(r.info.end_time / 1000 for r in solved) - t0 if solved else None,
        "trials": len(children), "solved": len(solved),
        "tracking_ms_per_iteration": parent.data.metrics.get(mlflow_key("tracking_ms_per_iteration")),
        "tracking_blocking_ms_per_iteration": parent.data.metrics.get(mlflow_key("tracking_blocking_ms_per_iteration")),
        "tracking_cpu_ms_per_iteration": parent.data.metrics.get(mlflow_key("tracking_cpu_ms_per_iteration")),
        "iteration_wall_ms": 1000 * trial_wall_s / iterations if iterations else None,  # same basis as the tracker's
        "per_trial": [{"env_steps": r.data.metrics.get(mlflow_key("env_steps")), "return": r.data.metrics.get(mlflow_key("episode_return_mean")),
                       "lr": r.data.params["ppo.lr"], "gamma": r.data.params["ppo.gamma"],
                       "batch": r.data.params["ppo.train_batch_size"]} for r in children],
    }


RLLIB_MODELS = {"default": "RLlib default model", "tuned": "RLlib tuned example"}


def run_rllib(out: Path, trials: int, concurrent: int, model: str) -> dict:
    if not RLLIB_PY.exists():
        raise SystemExit("no .venv-rllib: create it with `make bench-rllib-venv`")
    t0 = time.time()
    proc = subprocess.run([str(RLLIB_PY), str(ROOT / "benchmarks" / "rllib_sweep.py"), "--trials", str(trials),
                           "--concurrent", str(concurrent), "--storage", str(out / f"rllib-{model}"),
                           "--model", model],
                          cwd=ROOT, capture_output=True, text=True)
    t_exit = time.time()
    if proc.returncode != 0:
        raise SystemExit(f"RLlib sweep failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["process_s"] = t_exit - t0  # first_solve_from_process_s is measured inside, from its start
    return res


def fmt(v, spec=".1f"):
    return "n/a" if v is None else format(v, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--concurrent", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    out = ROOT / "benchmarks" / "out" / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True)
    ours = run_rlsweep(out, args.trials, args.concurrent)
    print("rlsweep", json.dumps(ours), flush=True)
    peers = {}
    for model in RLLIB_MODELS:
        peers[model] = run_rllib(out, args.trials, args.concurrent, model)
        print(f"rllib {model}", json.dumps(peers[model]), flush=True)
    stronger = min(peers, key=lambda m: (-peers[m]["solved"], peers[m]["process_s"]))

    import ray

    rllib_ray = subprocess.run([str(RLLIB_PY), "-c", "import ray, gymnasium; print(ray.__version__, gymnasium.__version__)"],
                               capture_output=True, text=True).stdout.split()

    def pct(ms):
        return "n/a" if ms is None or not ours["iteration_wall_ms"] else f"{100 * ms / ours['iteration_wall_ms']:.1f}%"

    def row(label, key, spec=".1f"):
        return f"| {label} | {fmt(ours.get(key), spec)} | " + " | ".join(fmt(peers[m].get(key), spec) for m in peers) + " |"

    ratios = {m: peers[m]["process_s"] / ours["process_s"] for m in peers}
    lines = [
        MARK_BEGIN,
        f"Run {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} CPU cores ({stdlib_platform.machine()}), no GPU; "
        f"rlsweep on ray {ray.__version__}, RLlib on ray {rllib_ray[0] if rllib_ray else '?'} with gymnasium "
        f"{rllib_ray[1] if len(rllib_ray) > 1 else '?'}. {args.trials} trials, {args.concurrent} at a time. "
        f"Command: `python benchmarks/sweep_vs_rllib.py`.",
        "",
        "| | rlsweep | " + " | ".join(f"{RLLIB_MODELS[m]} + Tune + Optuna" for m in peers) + " |",
        "|---|---|" + "---|" * len(peers),
        row("wall time, process start to exit (s)", "process_s"),
        row("process start to first solving trial (s)", "first_solve_from_process_s"),
        f"| trials solved (training return >= {TARGET:g}) | {ours['solved']}/{ours['trials']} | "
        + " | ".join(f"{peers[m]['solved']}/{peers[m]['trials']}" for m in peers) + " |",
        "",
        f"Wall time, RLlib / rlsweep: {RLLIB_MODELS[stronger]} (the stronger peer: most trials solved, then "
        f"fastest) {ratios[stronger]:.1f}x; "
        + "; ".join(f"{RLLIB_MODELS[m]} {ratios[m]:.1f}x" for m in peers if m != stronger) + ".",
        "",
        f"rlsweep MLflow logging, per iteration, against a mean iteration wall time of "
        f"{fmt(ours['iteration_wall_ms'], '.0f')} ms: all of MLflow's work for the trials (runs, params, metrics, "
        f"checkpoint artifacts, status; made by the driver's writer thread) {fmt(ours['tracking_ms_per_iteration'], '.1f')} "
        f"ms = {pct(ours['tracking_ms_per_iteration'])} of trial wall time ({fmt(ours['tracking_cpu_ms_per_iteration'], '.1f')} "
        f"ms of it CPU); of which the trials waited for {fmt(ours['tracking_blocking_ms_per_iteration'], '.2f')} ms = "
        f"{pct(ours['tracking_blocking_ms_per_iteration'])} (Tune's loop in the tracker's hooks, mostly at checkpoints, "
        f"which wait until the metrics before them are in MLflow).",
        "",
        "rlsweep trials (final env steps, training return, lr, gamma, batch): "
        + "; ".join(f"{t['env_steps']:.0f}, {t['return']:.0f}, {float(t['lr']):.2g}, {float(t['gamma']):.3f}, {t['batch']}"
                    for t in ours["per_trial"]) + ".",
        "",
        *[f"{RLLIB_MODELS[m]} trials (final env steps, training return): "
          + "; ".join(f"{t['env_steps']}, {fmt(t['return'], '.0f')}" for t in peers[m]["per_trial"]) + "."
          for m in peers],
        MARK_END,
    ]
    block = "\n".join(lines)
    print(block)
    if not args.no_write:
        write_section("sweep-vs-rllib", "Sweep: rlsweep vs RLlib + Tune + Optuna", block)


if __name__ == "__main__":
    sys.exit(main())
