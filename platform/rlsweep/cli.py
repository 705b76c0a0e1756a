"""The `rlsweep` command. Input is parsed and validated before Ray (or torch) is imported, so `--help`
and bad-input errors are instant: one line naming the file and key, exit code 2."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

from rlsweep.config import ConfigError, ExperimentConfig, load_experiment

EXIT_BAD_INPUT = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlsweep", description="Tune reinforcement-learning hyperparameters.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train one trial of an experiment through Ray Tune")
    t.add_argument("experiment", help="experiment YAML, e.g. experiments/cartpole_ppo.yaml")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set stop.env_steps=20000 (repeatable)")
    t.add_argument("--seed", type=int, default=None, help="override the experiment's seed")
    t.add_argument("--restore", metavar="CHECKPOINT", default=None,
                   help="continue from this checkpoint directory")
    return p


def _validated_train_inputs(args: argparse.Namespace) -> ExperimentConfig:
    from rlsweep import checkpoint
    from rlsweep.envs import space_info

    cfg = load_experiment(args.experiment, args.overrides, seed=args.seed)
    try:
        space_info(cfg.env)  # unknown env ids, bad kwargs and unsupported spaces fail here
    except ConfigError as e:
        raise ConfigError(f"{args.experiment}: {e}") from None
    if args.restore is not None:
        checkpoint.check(args.restore, cfg.model_dump(mode="json"))
    return cfg


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _validated_train_inputs(args)

    from rlsweep import metrics as M
    from rlsweep.tuning import run_train

    out = run_train(cfg, restore_from=args.restore)
    keys = [M.ENV_STEPS, M.TRAINING_ITERATION, M.EPISODE_RETURN_MEAN, M.EVAL_RETURN_MEAN, M.EVAL_RETURN_STD,
            M.EXPLAINED_VARIANCE, M.ENV_STEPS_PER_S, M.TIME_TOTAL_S]
    print(f"finished: {out.stop_reason or 'stopped'}" if out.error is None else f"failed: {out.error}")
    for k in keys:
        if k in out.metrics:
            print(f"  {k:<22} {_fmt(out.metrics[k])}")
    print(f"checkpoint: {out.checkpoint}")
    print(f"trial dir:  {out.trial_dir}")
    return 0 if out.error is None else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"train": cmd_train}[args.command](args)
    except ConfigError as e:
        print(f"rlsweep: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("rlsweep: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
