"""Rollout throughput and where one PPO iteration's time goes, by rollout workers and learner actors.

For each env (CartPole-v1, cheap; Hopper-v5, a MuJoCo task) and each layout (0, 1, 2, 4 rollout
workers with the update in the trial's process; 2 workers with 1 and 2 learner actors), one trial's
`Training` runs as the Trainable runs it (real Ray actors, a local Ray of this machine's CPUs) and
iterations are timed after a warm-up. Reported per iteration (median):

- env steps/s: the iteration's env steps / its wall time (what `env_steps_per_s` reports);
- sampling: waiting for the workers' rollouts (the env steps and the policy's forward passes,
  plus the weights going out and the rollouts coming back);
- weight broadcast: putting the policy's weights into Ray's object store and every sampler
  receiving them, measured on the same actors with the same weights, on its own;
- batch transfer: learner actors receiving the batch (put, then each learner getting it), likewise
  on its own; "-" with the update in the trial's process;
- learning: GAE and the PPO epochs (on learner actors: including the call's round trip);
- logging: one row of this iteration's metrics into an MLflow SQLite store (what the driver's
  writer thread does for every iteration with `tracking.flush_s: 0`), timed on its own.

No peer is measured here: this is rlsweep's own scaling on this machine, not a comparison.

    python benchmarks/throughput.py [--iterations 8] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import platform as stdlib_platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from report import markers, write_section

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))
MARK_BEGIN, MARK_END = markers("throughput")

ENVS = {
    "CartPole-v1": {"env": {"id": "CartPole-v1"}, "ppo": {"train_batch_size": 2048, "minibatch_size": 256,
                                                          "num_epochs": 4}},
    "Hopper-v5": {"env": {"id": "Hopper-v5"}, "policy": {"normalize_observations": True},
                  "ppo": {"train_batch_size": 2048, "minibatch_size": 256, "num_epochs": 4}},
}
LAYOUTS = [(0, 0), (1, 0), (2, 0), (4, 0), (2, 1), (2, 2)]  # (rollout workers, learner actors)


def config(env: str, workers: int, learners: int) -> dict:
    from rlsweep.config import validate

    base = ENVS[env]
    return validate({
        "name": "throughput", "seed": 0, **{k: v for k, v in base.items() if k != "ppo"},
        "policy": {"hidden_sizes": [64, 64], **base.get("policy", {})},
        "ppo": base["ppo"],
        # 8 envs in all, whatever the number of workers: the same batch, sampled by more processes
        "rollouts": {"num_rollout_workers": workers, "num_envs_per_worker": 8 // max(1, workers)},
        "evaluation": {"interval": 0},
        "stop": {"env_steps": 10**9},
        "resources": {"learner_cpus": 0.25, "worker_cpus": 0.25, "evaluation_cpus": 0.25},
        "learners": {"num_learners": learners, "cpus_per_learner": 0.25},
        "sweep": {"metric": "env_steps_per_s"},
    })


def _touch(actor, payload) -> int:
    """Run on an actor: receive `payload` (resolved from the object store) and answer."""
    return 1


def measure(env: str, workers: int, learners: int, iterations: int, tracker, run_id: str) -> dict:
    import ray

    from rlsweep import metrics as M
    from rlsweep.engine.learners import LearnerGroup
    from rlsweep.engine.training import Training
    from rlsweep.engine.workers import make_workers
    from rlsweep.ppo.batch import to_train_batch

    cfg = config(env, workers, learners)
    group = make_workers(cfg)
    learner = LearnerGroup(cfg) if learners else None
    training = Training(cfg, group, learner)
    group.wait_ready()
    rows = []
    try:
        training.iterate()  # warm-up: first calls, lazy imports
        for _ in range(iterations):
            t0 = time.perf_counter()
            r = training.iterate()
            wall = time.perf_counter() - t0
            row = {"steps_per_s": cfg.ppo.train_batch_size / wall, "wall": wall, "sample": r[M.TIME_SAMPLE_S],
                   "learn": r[M.TIME_LEARN_S], "broadcast": None, "transfer": None}
            weights = training.learner.weights()
            if workers:
                t = time.perf_counter()
                ref = ray.put(weights)
                ray.get([s.__ray_call__.remote(_touch, ref) for s in group.samplers])
                row["broadcast"] = time.perf_counter() - t
            if learners:
                rollouts = group.sample(weights, training.obs_stats)
                batch = to_train_batch(rollouts, cfg.ppo.gamma, cfg.ppo.gae_lambda)
                t = time.perf_counter()
                ref = ray.put(batch)
                ray.get([a.__ray_call__.remote(_touch, ref) for a in learner.actors])
                row["transfer"] = time.perf_counter() - t
            t = time.perf_counter()
            tracker.log_metrics(run_id, {k: v for k, v in r.items() if isinstance(v, (int, float))}, r[M.ENV_STEPS])
            row["log"] = time.perf_counter() - t
            rows.append(row)
    finally:
        training.close()
    med = {k: statistics.median(x[k] for x in rows) if rows[0][k] is not None else None for k in rows[0]}
    return {"env": env, "workers": workers, "learners": learners, **med}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=8)
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    import mlflow
    import ray
    import torch

    from rlsweep.tracking.store import Tracker

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    ray.init(address="local", include_dashboard=False, logging_level="WARNING")
    store = tempfile.mkdtemp(prefix="rlsweep-throughput-")
    tracker = Tracker(f"sqlite:///{store}/mlflow.db", "throughput")
    out = []
    for env in ENVS:
        for workers, learners in LAYOUTS:
            run_id = tracker.start(f"{env} w{workers} l{learners}", {})
            out.append(measure(env, workers, learners, args.iterations, tracker, run_id))
            print(out[-1], flush=True)

    def ms(v):
        return "-" if v is None else f"{1000 * v:.1f}"

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    lines = [
        MARK_BEGIN,
        f"Run {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} CPU cores "
        f"({stdlib_platform.processor() or stdlib_platform.machine()}), {gpu}; Python {sys.version.split()[0]}, "
        f"torch {torch.__version__}, ray {ray.__version__}, mlflow {mlflow.__version__}. Batch 2048 env steps "
        f"from 8 envs in all, 4 epochs of minibatches of 256, a [64, 64] network, no evaluation; median of "
        f"{args.iterations} iterations after one warm-up. Command: `python benchmarks/throughput.py "
        f"--iterations {args.iterations}`.",
        "",
        "| env | rollout workers | learner actors | env steps/s | iteration ms | sampling ms | weight broadcast ms "
        "| batch transfer ms | learning ms | logging ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out:
        lines.append(f"| {r['env']} | {r['workers']} | {r['learners']} | {r['steps_per_s']:.0f} | {ms(r['wall'])} | "
                     f"{ms(r['sample'])} | {ms(r['broadcast'])} | {ms(r['transfer'])} | {ms(r['learn'])} | "
                     f"{ms(r['log'])} |")
    lines += [
        "",
        "What changes elsewhere (reasoned, not measured: no GPU machine was lent to this run). On this "
        "2-core machine every extra process competes for the same two cores, so more rollout workers help "
        "only where env steps dominate (Hopper) and cost where the policy's forward pass and Ray's calls do "
        "(CartPole), and two learner actors split the gradient work but add an all-reduce per minibatch on "
        "the same cores. With a core per worker, sampling time falls roughly with the number of workers "
        "until the weight broadcast and the rollouts' return trip dominate; a learner actor on a GPU takes "
        "the epochs off the CPUs (for a [64, 64] network the transfer of the batch is then the larger "
        "part), and several GPU learners pay off only for networks or batches large enough that the "
        "per-minibatch all-reduce (NCCL) is small beside the backward pass.",
        MARK_END,
    ]
    block = "\n".join(lines)
    print(block)
    if not args.no_write:
        write_section("throughput", "Rollout throughput and one iteration's cost, by rollout workers and learner actors",
                      block)
    ray.shutdown()


if __name__ == "__main__":
    main()
