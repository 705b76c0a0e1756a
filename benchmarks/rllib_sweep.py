"""The RLlib peer of the sweep benchmark: RLlib PPO + Ray Tune + OptunaSearch on CartPole-v1.

Runs in its own virtualenv (ray[rllib] pins an older gymnasium than rlsweep allows); started by
`sweep_vs_rllib.py`, it prints one JSON line of results. Two configurations (`--model`):
- `default`: RLlib's default PPO model ([256, 256] tanh, separate value network) with 128-sample
  minibatches, 6 epochs and vf_loss_coeff 0.01, otherwise RLlib's defaults;
- `tuned`: RLlib's tuned CartPole example (rllib/tuned_examples/ppo/cartpole_ppo.py: a [32] linear
  network with shared value layers, 6 epochs, vf_loss_coeff 0.01, KL loss).
The sweep searches the same space with the same Optuna sampler as rlsweep's side. `num_env_runners=0` (sampling in the learner's process) so that each trial asks for
one CPU and two trials fit at once on two cores, as rlsweep's do.

    .venv-rllib/bin/python benchmarks/rllib_sweep.py --trials 16 --concurrent 2 --storage /abs/dir
"""

import argparse
import json
import time

T0 = time.time()

import optuna  # noqa: E402
import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.rllib.algorithms.ppo import PPOConfig  # noqa: E402
from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig  # noqa: E402
from ray.tune.search import ConcurrencyLimiter  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402
from ray.tune.utils import flatten_dict  # noqa: E402

RETURN = "env_runners/episode_return_mean"
STEPS = "num_env_steps_sampled_lifetime"


class Timeline(tune.Callback):
    def __init__(self):
        self.trials = {}

    def on_trial_complete(self, iteration, trials, trial, **info):
        r = flatten_dict(trial.last_result or {}, delimiter="/")
        self.trials[trial.trial_id] = {"end": time.time(), "return": r.get(RETURN), "env_steps": r.get(STEPS)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--concurrent", type=int, default=2)
    ap.add_argument("--storage", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", type=float, default=475.0)
    ap.add_argument("--max-steps", type=int, default=100_000)
    ap.add_argument("--model", choices=["default", "tuned"], default="default")
    args = ap.parse_args()

    ray.init(include_dashboard=False, logging_level="ERROR")
    searched = dict(lr=tune.loguniform(1e-4, 3e-3), gamma=tune.uniform(0.95, 0.999),
                    train_batch_size_per_learner=tune.choice([512, 1024, 2048, 4096]))
    config = PPOConfig().environment("CartPole-v1").env_runners(num_env_runners=0).debugging(seed=args.seed)
    if args.model == "tuned":
        config = (config
                  .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[32], fcnet_activation="linear",
                                                             vf_share_layers=True))
                  .training(num_epochs=6, vf_loss_coeff=0.01, use_kl_loss=True, **searched))
    else:
        config = config.training(num_epochs=6, minibatch_size=128, vf_loss_coeff=0.01, **searched)
    sampler = optuna.samplers.TPESampler(seed=args.seed, n_startup_trials=5, multivariate=True, constant_liar=True)
    timeline = Timeline()
    t_start = time.time()
    tuner = tune.Tuner(
        "PPO",
        param_space=config,
        tune_config=tune.TuneConfig(
            num_samples=args.trials,
            search_alg=ConcurrencyLimiter(OptunaSearch(metric=RETURN, mode="max", sampler=sampler),
                                          max_concurrent=args.concurrent),
        ),
        run_config=tune.RunConfig(storage_path=args.storage, name="rllib-sweep", verbose=0, callbacks=[timeline],
                                  stop={RETURN: args.target, STEPS: args.max_steps}),
    )
    results = tuner.fit()
    t_end = time.time()
    solved = [t for t in timeline.trials.values() if (t["return"] or 0) >= args.target]
    print(json.dumps({
        "process_s": t_end - T0, "sweep_s": t_end - t_start,
        "first_solve_s": min(t["end"] for t in solved) - t_start if solved else None,
        "first_solve_from_process_s": min(t["end"] for t in solved) - T0 if solved else None,
        "trials": len(results), "solved": len(solved), "errors": results.num_errors,
        "per_trial": list(timeline.trials.values()),
    }))


if __name__ == "__main__":
    main()
