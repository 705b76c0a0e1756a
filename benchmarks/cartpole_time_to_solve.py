"""CartPole-v1 time-to-solve: rlsweep vs Stable-Baselines3 PPO, side by side in one run.

Solved = deterministic evaluation mean >= 475 over 10 episodes (one per env of a 10-env vector env,
fresh seeds each evaluation), checked every 1024 env steps, for at most 100k env steps.

- rlsweep: `rlsweep train experiments/cartpole_ppo.yaml --seed S` as a user runs it (subprocess).
  Training time = the sum of the trial's step() times up to the solving iteration (Tune's
  time_total_s); whole-process time = from launching the command to its "finished" line.
- Stable-Baselines3: PPO with rl-zoo3's tuned CartPole-v1 hyperparameters (n_envs 8, n_steps 32,
  batch 256, gae_lambda 0.8, gamma 0.98, 20 epochs, lr and clip annealed linearly from 1e-3 and
  0.2), evaluated by the same procedure every 1024 env steps from a callback. Training time = from
  `learn()` start to the solving evaluation.

Both learners use one torch thread. Evaluation time is included in both training times and also
reported on its own. Writes the raw table to BENCHMARKS.md (between the markers) and prints it.

    python benchmarks/cartpole_time_to_solve.py [--seeds 0 1 2 3 4]
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
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

from report import markers, write_section

ROOT = Path(__file__).resolve().parents[1]
TARGET, MAX_STEPS, EVAL_EVERY, EVAL_EPISODES = 475.0, 100_000, 1024, 10
MARK_BEGIN, MARK_END = markers("cartpole-time-to-solve")


def evaluate(predict, seed: int) -> float:
    """Mean return of 10 deterministic episodes, one per sub-env (NEXT_STEP autoreset ignored after)."""
    env = gym.make_vec("CartPole-v1", num_envs=EVAL_EPISODES, vectorization_mode="vector_entry_point")
    obs, _ = env.reset(seed=seed)
    returns = np.zeros(EVAL_EPISODES)
    finished = np.zeros(EVAL_EPISODES, bool)
    while not finished.all():
        obs, r, term, trunc, _ = env.step(predict(obs))
        returns[~finished] += r[~finished]
        finished |= term | trunc
    env.close()
    return float(returns.mean())


# -- rlsweep --------------------------------------------------------------------------------------

def run_rlsweep(seed: int, results: Path) -> dict:
    cmd = [str(ROOT / ".venv/bin/rlsweep") if (ROOT / ".venv/bin/rlsweep").exists() else "rlsweep",
           "train", "experiments/cartpole_ppo.yaml", "--seed", str(seed), "--set", f"results_dir={results}"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    t_finished, out = None, []
    for line in proc.stdout:
        out.append(line)
        if line.startswith("finished:") and t_finished is None:
            t_finished = time.perf_counter() - t0
    proc.wait()
    t_exit = time.perf_counter() - t0
    text = "".join(out)
    trial_dir = Path(re.search(r"^trial dir:\s+(.+)$", text, re.M).group(1))
    rows = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
    last = rows[-1]
    return {
        "solved": last["eval_return_mean"] >= TARGET,
        "env_steps": last["env_steps"],
        "train_s": last["time_total_s"],
        "eval_s": sum(r["time_eval_s"] for r in rows),
        "sample_s": sum(r["time_sample_s"] for r in rows),
        "learn_s": sum(r["time_learn_s"] for r in rows),
        "first_iter_s": rows[0]["time_this_iter_s"],
        "process_to_solve_s": t_finished,
        "process_exit_s": t_exit,
    }


# -- Stable-Baselines3 -----------------------------------------------------------------------------

def run_sb3(seed: int) -> dict:
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    torch.set_num_threads(1)

    def linear(start: float):
        return lambda progress_remaining: progress_remaining * start

    class SolveCheck(BaseCallback):
        def __init__(self):
            super().__init__()
            self.next_eval, self.evals, self.eval_s, self.solved_at, self.t0 = EVAL_EVERY, 0, 0.0, None, None

        def _on_training_start(self):
            self.t0 = time.perf_counter()

        def _on_step(self) -> bool:
            return True

        def _on_rollout_end(self) -> None:
            if self.num_timesteps < self.next_eval:
                return
            self.next_eval += EVAL_EVERY
            self.evals += 1
            t = time.perf_counter()
            score = evaluate(lambda o: self.model.predict(o, deterministic=True)[0], seed=10_000 * seed + self.evals)
            self.eval_s += time.perf_counter() - t
            if score >= TARGET and self.solved_at is None:
                self.solved_at = (time.perf_counter() - self.t0, self.num_timesteps)
                self.model.stop_training = True  # read by the patched callback below

    env = make_vec_env("CartPole-v1", n_envs=8, seed=seed)
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20,
                ent_coef=0.0, learning_rate=linear(1e-3), clip_range=linear(0.2), seed=seed, verbose=0,
                device="cpu")
    cb = SolveCheck()

    class Stopper(BaseCallback):  # SB3 stops learn() when a callback's _on_step returns False
        def _on_step(self) -> bool:
            return not getattr(self.model, "stop_training", False)

    t0 = time.perf_counter()
    model.learn(total_timesteps=MAX_STEPS, callback=[cb, Stopper()])
    wall = time.perf_counter() - t0
    solved = cb.solved_at is not None
    return {
        "solved": solved,
        "env_steps": cb.solved_at[1] if solved else model.num_timesteps,
        "train_s": cb.solved_at[0] if solved else wall,
        "eval_s": cb.eval_s,
    }


# -- report ----------------------------------------------------------------------------------------

def summary(rows: list[dict], key: str) -> str:
    vals = [r[key] for r in rows if r["solved"]]
    if not vals:
        return "n/a"
    return f"{statistics.median(vals):.2f} ({min(vals):.2f}-{max(vals):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = ap.parse_args()
    results = ROOT / "benchmarks" / "out" / time.strftime("%Y%m%d-%H%M%S")
    ours, sb3 = [], []
    for seed in args.seeds:
        ours.append({"seed": seed, **run_rlsweep(seed, results)})
        print("rlsweep", ours[-1], flush=True)
        sb3.append({"seed": seed, **run_sb3(seed)})
        print("sb3    ", sb3[-1], flush=True)

    import ray
    import stable_baselines3
    import torch

    lines = [
        MARK_BEGIN,
        f"Run {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} CPU cores ({stdlib_platform.processor() or stdlib_platform.machine()}), "
        f"no GPU; Python {sys.version.split()[0]}, torch {torch.__version__}, ray {ray.__version__}, "
        f"gymnasium {gym.__version__}, stable-baselines3 {stable_baselines3.__version__}. "
        f"Command: `python benchmarks/cartpole_time_to_solve.py --seeds {' '.join(map(str, args.seeds))}`.",
        "",
        "| seed | rlsweep solved | rlsweep env steps | rlsweep training s | of which eval s | rlsweep process to solve s | "
        "SB3 solved | SB3 env steps | SB3 training s | of which eval s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a, b in zip(ours, sb3, strict=True):
        lines.append(
            f"| {a['seed']} | {a['solved']} | {a['env_steps']} | {a['train_s']:.2f} | {a['eval_s']:.2f} | "
            f"{a['process_to_solve_s']:.2f} | {b['solved']} | {b['env_steps']} | {b['train_s']:.2f} | {b['eval_s']:.2f} |"
        )
    med_ours = statistics.median(r["train_s"] for r in ours)
    med_sb3 = statistics.median(r["train_s"] for r in sb3)
    lines += [
        "",
        "Median (range) over solved seeds:",
        "",
        "| | rlsweep | Stable-Baselines3 |",
        "|---|---|---|",
        f"| seeds solved | {sum(r['solved'] for r in ours)}/{len(ours)} | {sum(r['solved'] for r in sb3)}/{len(sb3)} |",
        f"| training s | {summary(ours, 'train_s')} | {summary(sb3, 'train_s')} |",
        f"| env steps | {summary(ours, 'env_steps')} | {summary(sb3, 'env_steps')} |",
        f"| evaluation s (inside training s) | {summary(ours, 'eval_s')} | {summary(sb3, 'eval_s')} |",
        f"| process start to solve s | {summary(ours, 'process_to_solve_s')} | |",
        f"| process start to exit s | {summary(ours, 'process_exit_s')} | |",
        "",
        f"rlsweep / SB3 median training time: {med_ours / med_sb3:.2f}.",
        "",
        "Where rlsweep's time goes (median s over seeds): "
        f"sampling {statistics.median(r['sample_s'] for r in ours):.2f}, "
        f"learning {statistics.median(r['learn_s'] for r in ours):.2f}, "
        f"evaluation {statistics.median(r['eval_s'] for r in ours):.2f}; "
        f"process start to solve minus training {statistics.median(r['process_to_solve_s'] - r['train_s'] for r in ours):.2f} "
        "(Python and Ray start, the Tune trial actor and its imports (torch), rollout/evaluation actors where the experiment has them, the final checkpoint).",
        MARK_END,
    ]
    block = "\n".join(lines)
    print(block)
    if not args.no_write:
        write_section("cartpole-time-to-solve", "CartPole-v1 time to solve (rlsweep vs Stable-Baselines3)", block)


if __name__ == "__main__":
    main()
