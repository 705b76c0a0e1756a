"""Every metric name a trainable reports, in one place (the README's table lists them)."""

ENV_STEPS = "env_steps"  # env steps sampled so far, all workers (autoreset steps included)
EPISODES = "episodes"  # training episodes completed so far
EPISODE_RETURN_MEAN = "episode_return_mean"  # training episodes that ended this iteration (else the last value)
EPISODE_LENGTH_MEAN = "episode_length_mean"  # likewise, their mean length
EVAL_RETURN_MEAN = "eval_return_mean"  # deterministic evaluation: mean return (latest evaluation)
EVAL_RETURN_STD = "eval_return_std"
EVAL_LENGTH_MEAN = "eval_length_mean"
# The loss terms and the policy shift are of the updated policy on the whole batch, after the epochs.
POLICY_LOSS = "policy_loss"  # clipped surrogate loss
VALUE_LOSS = "value_loss"
ENTROPY = "entropy"
APPROX_KL = "approx_kl"  # k3 estimate of KL(old || new)
CLIP_FRACTION = "clip_fraction"  # share of samples whose ratio left [1-clip, 1+clip]
EXPLAINED_VARIANCE = "explained_variance"  # of the returns by the values the rollout used
GRAD_NORM = "grad_norm"  # global gradient norm before clipping, mean over minibatches
LR = "lr"
UPDATE_EPOCHS = "update_epochs"  # epochs run (fewer than num_epochs when target_kl stopped them)
TIME_SAMPLE_S = "time_sample_s"  # this iteration: waiting for rollouts
TIME_LEARN_S = "time_learn_s"  # GAE and the PPO epochs
TIME_EVAL_S = "time_eval_s"  # evaluation (0 when none ran)
TIME_OTHER_S = "time_other_s"  # everything else in step()
ENV_STEPS_PER_S = "env_steps_per_s"  # this iteration's env steps / its step() time
WORKERS_REPLACED = "workers_replaced"  # rollout/evaluation actors that died and were replaced, so far
# Cost-aware objectives (reported when stop.target_return is set; a sweep minimises them): the env steps
# (seconds of training) at which the evaluation mean first reached stop.target_return; until then, and
# for good when it never does, the budget stop.env_steps (stop.time_s), or what has been spent so far
# when there is no such budget.
ENV_STEPS_TO_TARGET = "env_steps_to_target"
TIME_TO_TARGET_S = "time_to_target_s"

# Tune's own keys that rlsweep reads.
TIME_TOTAL_S = "time_total_s"
TRAINING_ITERATION = "training_iteration"

# Everything a trainable reports that a sweep may optimise or MLflow records.
REPORTED = frozenset(
    v for k, v in dict(globals()).items() if k.isupper() and isinstance(v, str) and k != "TRAINING_ITERATION"
) | {TRAINING_ITERATION}

# Not a metric: text in the first result after a restore that could not continue exactly (the tracker
# sets it as the run's `rlsweep.restore_note` tag).
RESTORE_NOTE = "restore_note"

# Not a metric: where a trial's processes run, in its first result (the tracker sets it as the run's
# `rlsweep.placement` tag): "trainable=<node> rollout=<node>,<node> evaluation=<node> learners=<node>,...",
# each node as the first 8 hex digits of its Ray node id.
PLACEMENT = "placement"

# Not a metric: the NaN or infinity that ended a trial, in the one result that reports what the failing
# iteration measured (NaN included, so that MLflow's curves show it); the next step fails the trial.
NON_FINITE = "non_finite"


def text(value: object, digits: int = 4) -> str:
    """A metric value as the terminal shows it: whole numbers whole (`13312`, not `1.331e+04`), other
    floats to `digits` significant digits, NaN as `nan`."""
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.{digits}g}"
    return str(value)
