"""MuJoCo learning parity: rlsweep vs Stable-Baselines3 PPO with the same settings, side by side.

Both learners get Stable-Baselines3's PPO defaults for MuJoCo: separate 64x64 tanh actor and critic,
8 envs x 512 steps per iteration, minibatch 64, 10 epochs, lr 3e-4 (constant), clip 0.2, gamma 0.99,
GAE lambda 0.95, max grad norm 0.5, no entropy bonus, log std initialised at 0, observation
normalisation (SB3: VecNormalize with norm_obs only). Every 6 iterations (24,576 env steps) each
evaluates its deterministic policy on 5 fresh episodes; training returns are the mean return of the
episodes that ended in an iteration. 73 iterations = 299,008 env steps; the final return is the last
evaluation (after 72 updates).

- rlsweep: `rlsweep train <experiment> --seed S` as a user runs it (subprocess); curves from the
  trial's result.json.
- Stable-Baselines3: the same settings in a subprocess of this script (`--sb3 ENV SEED`).

For each (env, seed) the two run at the same time, one process each, so they share the machine alike;
wall time is the whole process, launch to exit. Writes raw numbers to benchmarks/out/parity.json, the
table to BENCHMARKS.md and the plot to benchmarks/plots/mujoco_parity.png.

    python benchmarks/mujoco_parity.py [--envs Hopper-v5 Walker2d-v5 HalfCheetah-v5] [--seeds 0 1 2]
    python benchmarks/mujoco_parity.py --report-only     # table and plot from parity.json
    (a run of some --envs replaces their results in parity.json and keeps the other envs')
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
import threading
import time
import warnings
from pathlib import Path

from report import markers, write_section

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "parity.json"
PLOT = ROOT / "benchmarks" / "plots" / "mujoco_parity.png"
NUM_ENVS, N_STEPS, MINIBATCH, EPOCHS, LR = 8, 512, 64, 10, 3e-4
BATCH = NUM_ENVS * N_STEPS
EVAL_EVERY, EVAL_EPISODES = 6, 5
ITERATIONS = int(os.environ.get("PARITY_ITERATIONS", "73"))  # a smaller number for a smoke run
TOTAL_STEPS = ITERATIONS * BATCH
ENVS = ["Hopper-v5", "Walker2d-v5", "HalfCheetah-v5"]  # HalfCheetah has no terminal states, only a time limit
MARK = "mujoco-parity"

EXPERIMENT = f"""\
name: parity
seed: 0
env: {{id: ENV}}
policy: {{hidden_sizes: [64, 64], activation: tanh, normalize_observations: true, log_std_init: 0.0}}
ppo: {{lr: {LR}, anneal_lr: false, gamma: 0.99, gae_lambda: 0.95, train_batch_size: {BATCH},
      minibatch_size: {MINIBATCH}, num_epochs: {EPOCHS}, clip: 0.2, vf_coef: 0.5, ent_coef: 0.0,
      max_grad_norm: 0.5}}
rollouts: {{num_rollout_workers: 0, num_envs_per_worker: {NUM_ENVS}}}
evaluation: {{interval: {EVAL_EVERY}, episodes: {EVAL_EPISODES}}}
stop: {{env_steps: {TOTAL_STEPS}}}
resources: {{learner_cpus: 1}}
checkpoint_frequency: 0
"""


# -- the two learners, each a whole process ---------------------------------------------------------

def start_rlsweep(env_id: str, seed: int, work: Path) -> subprocess.Popen:
    (work / "mlruns").mkdir()
    experiment = work / f"parity_{env_id}.yaml"
    experiment.write_text(EXPERIMENT.replace("ENV", env_id))
    exe = ROOT / ".venv/bin/rlsweep"
    cmd = [str(exe) if exe.exists() else "rlsweep", "train", str(experiment), "--seed", str(seed),
           "--set", f"results_dir={work / 'results'}", "--set", f"tracking.local_dir={work / 'mlruns'}"]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def rlsweep_curves(stdout: str) -> dict:
    trial_dir = next(Path(line.split(":", 1)[1].strip()) for line in stdout.splitlines() if line.startswith("trial dir:"))
    rows = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
    evals = [(r["env_steps"], r["eval_return_mean"]) for r in rows if r["training_iteration"] % EVAL_EVERY == 0]
    train = [(r["env_steps"], r["episode_return_mean"]) for r in rows]
    return {"eval": evals, "train": train, "train_s": rows[-1]["time_total_s"]}


def run_sb3(env_id: str, seed: int) -> None:
    """The Stable-Baselines3 side (this script with --sb3): prints its curves as one JSON line."""
    import gymnasium as gym
    import numpy as np
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    torch.set_num_threads(1)
    venv = VecNormalize(make_vec_env(env_id, n_envs=NUM_ENVS, seed=seed), norm_obs=True, norm_reward=False)
    eval_env = gym.make_vec(env_id, num_envs=EVAL_EPISODES, vectorization_mode="sync")

    def evaluate(model, iteration: int) -> float:
        obs, _ = eval_env.reset(seed=[10_000 * seed + 100 * iteration + i for i in range(EVAL_EPISODES)])
        returns, finished = np.zeros(EVAL_EPISODES), np.zeros(EVAL_EPISODES, bool)
        while not finished.all():
            action, _ = model.predict(venv.normalize_obs(obs), deterministic=True)
            obs, r, term, trunc, _ = eval_env.step(action)
            returns[~finished] += r[~finished]
            finished |= term | trunc
        return float(returns.mean())

    class Curves(BaseCallback):
        def __init__(self):
            super().__init__()
            self.rollouts, self.episodes, self.eval, self.train, self.last = 0, [], [], [], float("nan")

        def _on_step(self) -> bool:
            self.episodes += [info["episode"]["r"] for info in self.locals["infos"] if "episode" in info]
            return True

        def _on_rollout_end(self) -> None:
            # called after collecting rollout i+1, before its update: the policy has had i updates
            self.rollouts += 1
            if self.episodes:
                self.last = float(np.mean(self.episodes))
            self.episodes = []
            self.train.append((self.num_timesteps, self.last))
            updates = self.rollouts - 1
            if updates and updates % EVAL_EVERY == 0:
                self.eval.append((updates * BATCH, evaluate(self.model, updates)))

    model = PPO("MlpPolicy", venv, n_steps=N_STEPS, batch_size=MINIBATCH, n_epochs=EPOCHS, learning_rate=LR,
                gamma=0.99, gae_lambda=0.95, clip_range=0.2, ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5,
                seed=seed, device="cpu", verbose=0)
    curves = Curves()
    t0 = time.perf_counter()
    model.learn(total_timesteps=TOTAL_STEPS, callback=curves)
    print(json.dumps({"eval": curves.eval, "train": curves.train, "train_s": time.perf_counter() - t0}), flush=True)


def start_sb3(env_id: str, seed: int) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--sb3", env_id, str(seed)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def pair(env_id: str, seed: int) -> dict:
    """rlsweep and SB3 on (env, seed), at the same time; each timed from launch to its own exit."""
    with tempfile.TemporaryDirectory(prefix="parity-") as tmp:
        t0 = time.perf_counter()
        procs = {"rlsweep": start_rlsweep(env_id, seed, Path(tmp)), "sb3": start_sb3(env_id, seed)}
        outputs = {name: [] for name in procs}
        walls: dict[str, float] = {}

        def drain(name: str) -> None:
            outputs[name].append(procs[name].stdout.read())
            procs[name].wait()
            walls[name] = time.perf_counter() - t0

        threads = [threading.Thread(target=drain, args=(name,)) for name in procs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out = {}
        for name, proc in procs.items():
            stdout = "".join(outputs[name])
            if proc.returncode != 0:
                raise SystemExit(f"{name} on {env_id} seed {seed} exited {proc.returncode}:\n{stdout[-2000:]}")
            curves = rlsweep_curves(stdout) if name == "rlsweep" else json.loads(stdout.strip().splitlines()[-1])
            out[name] = {**curves, "wall_s": walls[name]}
        return out


# -- report ----------------------------------------------------------------------------------------

def final(run: dict) -> float:
    return run["eval"][-1][1]


def last3(run: dict) -> float:
    """The mean of the last three evaluations: less at the mercy of one evaluation's 5 episodes."""
    return statistics.mean(v for _, v in run["eval"][-3:])


def verdict(ours: list[float], peer: list[float]) -> str:
    mean = statistics.mean(ours)
    if mean >= max(peer):
        return "above SB3's spread"
    if mean >= min(peer):
        return "within SB3's spread"
    return "below SB3's spread"


def plot(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    envs = list(results)
    fig, axes = plt.subplots(1, len(envs), figsize=(5.5 * len(envs), 4.2), squeeze=False)
    for ax, env_id in zip(axes[0], envs, strict=True):
        for name, colour in (("rlsweep", "tab:blue"), ("sb3", "tab:orange")):
            runs = [r[name] for r in results[env_id].values()]
            for key, style in (("eval", "-"), ("train", ":")):
                steps = np.array([s for s, _ in runs[0][key]])
                ys = np.array([[v for _, v in r[key]] for r in runs], dtype=float)
                label = f"{'rlsweep' if name == 'rlsweep' else 'SB3'} {'deterministic eval' if key == 'eval' else 'training episodes'}"
                with warnings.catch_warnings():  # an iteration in which no seed ended an episode is a gap
                    warnings.simplefilter("ignore", RuntimeWarning)
                    ax.plot(steps, np.nanmean(ys, axis=0), style, color=colour, label=label)
                if key == "eval":
                    ax.fill_between(steps, np.nanmin(ys, axis=0), np.nanmax(ys, axis=0), color=colour, alpha=0.15)
        ax.set_title(f"{env_id} ({len(runs)} seeds: mean, min-max)")
        ax.set_xlabel("env steps")
        ax.set_ylabel("episode return")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=90)


def report(data: dict) -> str:
    results, meta = data["results"], data["meta"]
    lines = [
        markers(MARK)[0],
        f"Run {meta['when']} on {meta['cpus']} CPU cores, no GPU; {meta['versions']}. "
        f"Command: `{meta['command']}`. Settings: SB3's PPO defaults (see the script's docstring), "
        f"{TOTAL_STEPS:,} env steps, deterministic evaluation of {EVAL_EPISODES} episodes every {EVAL_EVERY * BATCH:,} steps; "
        "each (env, seed) pair ran side by side, one process each. Plot: "
        "[benchmarks/plots/mujoco_parity.png](benchmarks/plots/mujoco_parity.png) (solid: deterministic evaluation, "
        "mean with min-max band; dotted: training episodes).",
        "",
        "| env | rlsweep final eval per seed | rlsweep mean | SB3 final eval per seed | SB3 mean | rlsweep vs SB3's spread | "
        "last 3 evaluations, mean over seeds: rlsweep / SB3 | rlsweep wall s (median) | SB3 wall s (median) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for env_id, seeds in results.items():
        ours = [final(r["rlsweep"]) for r in seeds.values()]
        peer = [final(r["sb3"]) for r in seeds.values()]
        walls = [statistics.median(r[n]["wall_s"] for r in seeds.values()) for n in ("rlsweep", "sb3")]
        lines.append(
            f"| {env_id} | {', '.join(f'{v:.0f}' for v in ours)} | {statistics.mean(ours):.0f} | "
            f"{', '.join(f'{v:.0f}' for v in peer)} | {statistics.mean(peer):.0f} | {verdict(ours, peer)} | "
            f"{statistics.mean(last3(r['rlsweep']) for r in seeds.values()):.0f} / "
            f"{statistics.mean(last3(r['sb3']) for r in seeds.values()):.0f} | {walls[0]:.0f} | {walls[1]:.0f} |"
        )
    lines += ["", "Evaluation curves (env steps: rlsweep mean / SB3 mean over seeds):", ""]
    for env_id, seeds in results.items():
        runs = list(seeds.values())
        points = []
        for i, (steps, _) in enumerate(runs[0]["rlsweep"]["eval"]):
            a = statistics.mean(r["rlsweep"]["eval"][i][1] for r in runs)
            b = statistics.mean(r["sb3"]["eval"][i][1] for r in runs)
            points.append(f"{steps // 1000}k: {a:.0f} / {b:.0f}")
        lines.append(f"- {env_id}: " + "; ".join(points))
    lines.append(markers(MARK)[1])
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--envs", nargs="+", default=ENVS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--report-only", action="store_true", help="table and plot from benchmarks/out/parity.json")
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    ap.add_argument("--sb3", nargs=2, metavar=("ENV", "SEED"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sb3:
        run_sb3(args.sb3[0], int(args.sb3[1]))
        return
    if args.report_only:
        data = json.loads(OUT.read_text())
    else:
        import gymnasium
        import ray
        import stable_baselines3
        import torch

        # a run of some envs replaces theirs in an earlier run's results and keeps the others
        earlier = json.loads(OUT.read_text())["results"] if OUT.is_file() else {}
        results: dict = {env_id: earlier[env_id] for env_id in earlier if env_id not in args.envs}
        for env_id in args.envs:
            for seed in args.seeds:
                results.setdefault(env_id, {})[str(seed)] = pair(env_id, seed)
                r = results[env_id][str(seed)]
                print(f"{env_id} seed {seed}: rlsweep {final(r['rlsweep']):.0f} ({r['rlsweep']['wall_s']:.0f} s), "
                      f"SB3 {final(r['sb3']):.0f} ({r['sb3']['wall_s']:.0f} s)", flush=True)
        data = {"results": results, "meta": {
            "when": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(),
            "versions": f"Python {sys.version.split()[0]} ({stdlib_platform.machine()}), torch {torch.__version__}, "
                        f"ray {ray.__version__}, gymnasium {gymnasium.__version__}, "
                        f"stable-baselines3 {stable_baselines3.__version__}",
            "command": "python benchmarks/mujoco_parity.py " + " ".join(sys.argv[1:])
                       + (f" (after an earlier run of {', '.join(e for e in results if e not in args.envs)})"
                          if any(e not in args.envs for e in results) else "")}}
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(data))
    order = sorted(data["results"], key=lambda e: ENVS.index(e) if e in ENVS else len(ENVS))
    data["results"] = {e: data["results"][e] for e in order}
    plot(data["results"])
    block = report(data)
    print(block)
    if not args.no_write:
        write_section(MARK, "MuJoCo learning parity with Stable-Baselines3 (same PPO settings)", block)


if __name__ == "__main__":
    main()
