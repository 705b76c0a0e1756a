"""Every metric name a trainable reports, in one place (the README's table lists them), and how a
trial's per-agent values become what it reports."""

from __future__ import annotations

from rlsweep import scores

ENV_STEPS = "env_steps"  # env steps sampled so far per agent, all workers (autoreset steps included)
EPISODES = "episodes"  # training episodes completed so far, all agents
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
ENV_STEPS_PER_S = "env_steps_per_s"  # this iteration's env steps, all agents, / its step() time
WORKERS_REPLACED = "workers_replaced"  # rollout/evaluation actors that died and were replaced, so far
# Cost-aware objectives (reported when stop.target_return is set; a sweep minimises them): the env steps
# (seconds of training) at which the evaluation mean first reached stop.target_return; until then, and
# for good when it never does, the budget stop.env_steps (stop.time_s), or what has been spent so far
# when there is no such budget.
ENV_STEPS_TO_TARGET = "env_steps_to_target"
TIME_TO_TARGET_S = "time_to_target_s"
SEEDS_AT_TARGET = "seeds_at_target"  # agents whose evaluation has reached stop.target_return (with one)

# Tune's own keys that rlsweep reads.
TIME_TOTAL_S = "time_total_s"
TRAINING_ITERATION = "training_iteration"

# Everything a trainable reports that a sweep may optimise or MLflow records.
REPORTED = frozenset(
    v for k, v in dict(globals()).items() if k.isupper() and isinstance(v, str) and k != "TRAINING_ITERATION"
) | {TRAINING_ITERATION}

# What a sweep's parent run reports of tracking itself (at its end).
TRACKING_S = "tracking_s"  # the driver's writer thread, all of the sweep
TRACKING_MS_PER_ITERATION = "tracking_ms_per_iteration"  # that, per trial iteration
TRACKING_BLOCKING_MS_PER_ITERATION = "tracking_blocking_ms_per_iteration"  # of it, what held trials up
TRACKING_CPU_MS_PER_ITERATION = "tracking_cpu_ms_per_iteration"  # of it, CPU time

# MLflow draws one chart section per text before the last "/" of a metric's name, custom sections in
# alphabetical order first, then its "Model metrics" (names without a "/"), then "System metrics"
# (`system/...`). So in MLflow each metric carries its section's prefix, and the sections' names put the
# answer first: what reaching the target cost, the evaluation, then the rollouts' episodes, where the time
# went, what training did, and last rlsweep's own bookkeeping beside MLflow's system metrics. Tune, the
# terminal, `sweep.metric` and every file use the bare names; `mlflow_key` is applied where metrics are
# written to MLflow and where MLflow is asked for one (a parent run's `best_*` stay bare).
SECTIONS = {
    "cost": (ENV_STEPS_TO_TARGET, TIME_TO_TARGET_S, SEEDS_AT_TARGET),
    "evaluation": (EVAL_RETURN_MEAN, EVAL_RETURN_STD, EVAL_LENGTH_MEAN),
    "rollouts": (ENV_STEPS, EPISODES, EPISODE_RETURN_MEAN, EPISODE_LENGTH_MEAN),
    "timing": (TIME_SAMPLE_S, TIME_LEARN_S, TIME_EVAL_S, TIME_OTHER_S, ENV_STEPS_PER_S, TIME_TOTAL_S,
               TRAINING_ITERATION),
    "training": (POLICY_LOSS, VALUE_LOSS, ENTROPY, APPROX_KL, CLIP_FRACTION, EXPLAINED_VARIANCE, GRAD_NORM, LR,
                 UPDATE_EPOCHS),
    "system": (WORKERS_REPLACED, TRACKING_S, TRACKING_MS_PER_ITERATION, TRACKING_BLOCKING_MS_PER_ITERATION,
               TRACKING_CPU_MS_PER_ITERATION),
}
_SECTION_OF = {name: section for section, names in SECTIONS.items() for name in names}


def mlflow_key(name: str) -> str:
    """The name a metric has in MLflow: its section's prefix and the name (`evaluation/eval_return_mean`,
    `evaluation/eval_return_mean_ci_low`, `evaluation/eval_return_mean/seed_3`); a name of no section
    as it is."""
    section = _SECTION_OF.get(name) or _SECTION_OF.get(scored_base(name))
    return f"{section}/{name}" if section else name


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


# Not metrics: under PBT, the first result after a trial continued from another trial's checkpoint names
# that trial (`cloned_from`: its trial id) and the trial's line of such copies ("<trial id>@<env steps> ...",
# oldest first; `lineage`). With PBT or an experiment's `schedules`, every result carries the update's
# values over the run as JSON (`hp_history`: [[env_step, {key: value}], ...]), and each value the learner
# runs with as a metric, `hp/<key>` (`hyperparameter`).
CLONED_FROM = "cloned_from"
LINEAGE = "lineage"
HP_HISTORY = "hp_history"
HP_PREFIX = "hp/"


def hyperparameter(key: str) -> str:
    """The metric of a value the learner runs with: `hp/ppo.lr` (MLflow charts them as section "hp")."""
    return HP_PREFIX + key


# With K > 1 agents per trial (sweep.seeds_per_trial), these are reported as the IQM over the agents
# (the mean below 4), each with SCORE_SUFFIXES beside it and one value per agent as "<name>/seed_<seed>";
# every other per-agent metric as the mean over the agents. The sampler and ASHA see the IQM.
SCORED = (EPISODE_RETURN_MEAN, EVAL_RETURN_MEAN, ENV_STEPS_TO_TARGET, TIME_TO_TARGET_S)
SCORE_SUFFIXES = ("_ci_low", "_ci_high", "_min", "_max")  # the 95% bootstrap interval of the IQM, extremes


def per_seed(name: str, seed: int) -> str:
    """The name of one agent's value of a scored metric."""
    return f"{name}/seed_{seed}"


def is_reported(name: str) -> bool:
    """Whether `name` is a metric a trainable reports: one of REPORTED, or a scored metric's interval,
    extreme or per-seed value."""
    return name in REPORTED or scored_base(name) in SCORED or name.startswith(HP_PREFIX)


def scored_base(name: str) -> str:
    """The scored metric a name belongs to (`env_steps_to_target_ci_low/...` -> `env_steps_to_target`), or
    the name itself."""
    base = name.partition("/seed_")[0]
    return next((base[: -len(x)] for x in SCORE_SUFFIXES if base.endswith(x)), base)


# Series that hold a setting, or a count that rarely moves: MLflow gets their first point, the points
# either side of each change and their last (`tracking.series`); every other metric, every iteration.
STEPWISE = (LR, UPDATE_EPOCHS, WORKERS_REPLACED)


def is_stepwise(name: str) -> bool:
    """Whether `name` is a STEPWISE series or a value the learner runs with (`hp/<key>`)."""
    return name in STEPWISE or name.startswith(HP_PREFIX)


COST = (ENV_STEPS_TO_TARGET, TIME_TO_TARGET_S)  # the budget stands in until every agent reached the target


def is_cost(name: str) -> bool:
    """Whether `name` is a cost-aware metric (or its interval, extreme, per-seed value): until every
    agent has reached the target its value is a stand-in (the budget), not a measurement."""
    return scored_base(name) in COST


def summarise(per_agent: dict[str, list[float]], seeds: list[int]) -> dict[str, float]:
    """What a trial reports of per-agent values (one list entry per agent, in `seeds` order): with one
    agent its values; else the scored metrics' IQM, interval, extremes and per-seed values, and the
    mean of every other metric (NaN while any agent has none)."""
    if len(seeds) == 1:
        return {key: values[0] for key, values in per_agent.items()}
    out: dict[str, float] = {}
    for key, values in per_agent.items():
        if key in SCORED:
            s = scores.score(values)
            out[key] = s.iqm
            out.update(zip((key + x for x in SCORE_SUFFIXES), (s.low, s.high, s.min, s.max), strict=True))
            out.update((per_seed(key, seed), v) for seed, v in zip(seeds, values, strict=True))
        else:
            out[key] = sum(values) / len(values)
    return out


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


def shown(result: dict, name: str, digits: int = 4) -> str:
    """A metric of a result as the terminal shows it: the value, and with several seeds its interval
    (`412.3 [398.1, 430]`)."""
    value = text(result.get(name, float("nan")), digits)
    low, high = result.get(name + SCORE_SUFFIXES[0]), result.get(name + SCORE_SUFFIXES[1])
    if low is None or high is None:
        return value
    return f"{value} [{text(low, digits)}, {text(high, digits)}]"
