"""Experiment configuration: pydantic models, YAML loading and `--set` overrides.

Everything here is validated before Ray starts. Every error names the file, the key and what was
expected, so the CLI can print one line and exit 2.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

WITHHELD = "withheld"  # a validation error whose input is not shown (it may hold a credential)


class ConfigError(ValueError):
    """Bad user input: the message is one line a user can act on."""


def first_line(e: BaseException) -> str:
    """An exception in one line for a message: its text's first line (at most 300 characters), or its
    type's name when it has no text."""
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


# one rule for every name rlsweep makes folders and runs from (experiments, sweeps): ASCII letters,
# digits, '-', '_' and '.', so that a sweep's `best -o` file is a valid experiment again
NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"
NAME_RULE = "use ASCII letters, digits, '-', '_' and '.'"


SEED_MAX = 2**31 - 1  # every seed, in files and on the command line (numpy, torch and gymnasium take it)


def check_seed(seed: int, what: str) -> int:
    """`seed` if it is a seed rlsweep takes (0 to `SEED_MAX`), else a ConfigError naming `what`."""
    if not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"{what} {seed}: expected a whole number from 0 to {SEED_MAX}")
    return seed


def check_name(name: str, what: str) -> str:
    """`name` if it follows `NAME_PATTERN` (and is not only dots), else a ConfigError naming `what`."""
    if not re.fullmatch(NAME_PATTERN, name) or set(name) <= {"."} or len(name) > 200:
        raise ConfigError(f"{what} {name!r}: {NAME_RULE} (at most 200)")
    return name


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class EnvConfig(_Section):
    """The environment every rollout and evaluation worker builds."""

    id: str = Field(min_length=1, description="A registered gymnasium id, or 'package.module:Class'.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the env.")
    vectorization: Literal["auto", "vector_entry_point", "sync", "async"] = Field(
        "auto",
        description="auto: the env's own vectorised implementation where it has one, else sync.",
    )
    max_episode_steps: int | None = Field(None, ge=1, description="Override the env's time limit.")
    preset: Literal["atari"] | None = Field(
        None, description="atari: the standard Atari pipeline on an ALE game id (rlsweep[atari]): no-op starts, "
        "frame skip 4 with max-pooling, 84x84 grayscale, 4 stacked frames, FIRE at the start of each life; a lost "
        "life ends a training episode and training rewards are clipped to their sign, while evaluation and the "
        "reported episode returns are the unclipped scores of whole games.")


class PolicyConfig(_Section):
    """The actor-critic network: separate actor and critic MLPs, or for images a convolutional trunk."""

    encoder: Literal["auto", "mlp", "cnn"] = Field(
        "auto", description="mlp: observations flattened into MLPs; cnn: the Nature-DQN convolutional trunk (32 8x8/4, "
        "64 4x4/2, 64 3x3/1, a dense layer of cnn_dense) for image observations (H x W x C or C x H x W; uint8 "
        "pixels are scaled by 1/255 in the network); auto: cnn for 3-d uint8 observations, else mlp.")
    hidden_sizes: list[int] = Field(default_factory=lambda: [64, 64], description="Hidden layer widths (mlp).")
    activation: Literal["tanh", "relu"] = Field("tanh", description="Hidden activation (mlp; the cnn uses relu).")
    cnn_dense: int = Field(512, ge=1, le=65_536, description="Width of the cnn's dense layer after its convolutions.")
    shared_trunk: bool = Field(True, description="cnn: actor and critic heads on one trunk; false gives each its "
                               "own trunk (mlp policies always have separate actor and critic networks).")
    log_std_init: float = Field(0.0, description="Initial log std of the Gaussian (Box actions only).")
    normalize_observations: bool = Field(False, description="Running mean/std normalisation of obs.")

    @field_validator("hidden_sizes")
    @classmethod
    def _positive_sizes(cls, v: list[int]) -> list[int]:
        if not v or any(h < 1 or h > 65_536 for h in v) or len(v) > 64:
            raise ValueError("expected a non-empty list of positive layer widths up to 65536, e.g. [64, 64]")
        return v


class PPOConfig(_Section):
    """The PPO update."""

    lr: float = Field(3e-4, gt=0, description="Adam learning rate.")
    anneal_lr: bool = Field(False, description="Anneal lr linearly to 0 over stop.env_steps.")
    adam_eps: float = Field(1e-5, gt=0, description="Adam epsilon.")
    gamma: float = Field(0.99, gt=0, le=1, description="Discount factor.")
    gae_lambda: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    train_batch_size: int = Field(2048, ge=1, le=2**24, description="Env steps collected per iteration, all workers.")
    minibatch_size: int = Field(256, ge=1, le=2**24, description="Samples per gradient step.")
    num_epochs: int = Field(10, ge=1, le=10_000, description="Passes over the batch per iteration.")
    clip: float = Field(0.2, gt=0, description="Policy ratio clip range.")
    vf_clip: float | None = Field(None, gt=0, description="Value clip range; null disables.")
    vf_coef: float = Field(0.5, ge=0, description="Value loss coefficient.")
    ent_coef: float = Field(0.0, ge=0, description="Entropy bonus coefficient.")
    max_grad_norm: float = Field(0.5, gt=0, description="Global gradient-norm clip.")
    target_kl: float | None = Field(None, gt=0, description="Stop the epochs once approx KL exceeds this.")
    normalize_advantages: bool = Field(True, description="Normalise advantages per minibatch.")

    @model_validator(mode="after")
    def _minibatch_divides_batch(self) -> PPOConfig:
        if self.minibatch_size > self.train_batch_size or self.train_batch_size % self.minibatch_size:
            raise ValueError(
                f"minibatch_size ({self.minibatch_size}) must divide train_batch_size "
                f"({self.train_batch_size})"
            )
        return self

    @property
    def num_minibatches(self) -> int:
        """Gradient steps per epoch (the validator makes minibatch_size divide train_batch_size)."""
        return self.train_batch_size // self.minibatch_size


class RolloutConfig(_Section):
    """Where experience is collected."""

    num_rollout_workers: int = Field(1, ge=0, le=10_000, description="Ray actors sampling; 0 samples in the trainable.")
    num_envs_per_worker: int = Field(8, ge=1, le=65_536, description="Vectorised envs in each worker.")
    sample_timeout_s: float = Field(
        600, gt=0, le=86_400, description="A sampler that has not returned an iteration's samples after this long "
        "hangs (an env that never returns): a rollout worker is replaced and its share sampled again once, a "
        "second time (or in-process, the first) the trial fails naming the env.")


class EvaluationConfig(_Section):
    """Deterministic evaluation on its own actor and its own seeds."""

    interval: int = Field(1, ge=0, description="Evaluate every N iterations; 0 never evaluates.")
    episodes: int = Field(10, ge=1, le=1_000_000, description="Episodes per evaluation.")
    deterministic: bool = Field(True, description="Greedy/mean actions instead of sampling.")
    timeout_s: float = Field(
        600, gt=0, le=86_400, description="An evaluation that has not returned after this long hangs: its worker "
        "is replaced and it runs again once, a second time (or in-process, the first) the trial fails.")


class StopConfig(_Section):
    """When a trial stops; whichever criterion is met first."""

    target_return: float | None = Field(None, description="Stop once the evaluation mean reaches this.")
    episode_return: float | None = Field(
        None, description="Stop once the mean return of the training episodes ending in an iteration reaches this."
    )
    env_steps: int | None = Field(None, ge=1, description="Stop after this many env steps.")
    time_s: float | None = Field(None, gt=0, description="Stop after this many seconds of training.")

    @model_validator(mode="after")
    def _at_least_one(self) -> StopConfig:
        if all(v is None for v in (self.target_return, self.episode_return, self.env_steps, self.time_s)):
            raise ValueError("set at least one of target_return, episode_return, env_steps, time_s")
        return self


class ResourcesConfig(_Section):
    """What a trial asks of Ray; fractions are allowed."""

    # defaults: a trial with 1 or 2 rollout workers fits a 2-core machine (0.75 + 2 x 0.5 + 0.25)
    learner_cpus: float = Field(0.75, gt=0, description="CPUs for the trainable (learner).")
    learner_gpus: float = Field(0.0, ge=0, description="GPUs for the learner; >0 trains on CUDA.")
    worker_cpus: float = Field(0.5, gt=0, description="CPUs for each rollout worker.")
    evaluation_cpus: float = Field(0.25, gt=0, description="CPUs for the evaluation worker.")
    torch_threads: int = Field(1, ge=1, le=1024, description="torch intra-op threads in the learner.")


class LearnersConfig(_Section):
    """Where the PPO update runs: in the trial's process, or on learner actors (data-parallel)."""

    num_learners: int = Field(0, ge=0, le=1024, description="0: the update runs in the trial's process; N >= 1: "
                              "on N Ray actors, each computing its share of every minibatch's gradient, averaged "
                              "across them (torch.distributed: gloo on CPUs, NCCL on GPUs).")
    cpus_per_learner: float = Field(1.0, gt=0, description="CPUs for each learner actor.")
    gpus_per_learner: float = Field(0.0, ge=0, description="GPUs for each learner actor; >0 trains on CUDA.")


class ConfirmConfig(_Section):
    """The confirmation round: after the search, its best configurations run again on fresh seeds."""

    top: int = Field(3, ge=1, le=1000, description="How many of the search's best configurations to confirm.")
    seeds: int = Field(5, ge=1, le=64, description="Fresh seeds (agents) each confirmation trial trains.")


class PBTConfig(_Section):
    """Population-based training (`sweep.scheduler: pbt`): the trials are a population that trains side by
    side; every `interval` env steps a trial in the bottom `quantile_fraction` continues from a copy of one
    in the top (weights, optimiser, normaliser, RNG and env states) with that trial's values perturbed."""

    interval: int = Field(20_000, ge=1, description="Env steps between a trial's exploit-and-explore steps.")
    burn_in: int = Field(0, ge=0, description="Env steps before a trial's first exploit-and-explore step.")
    quantile_fraction: float = Field(0.25, gt=0, le=0.5, description="The bottom fraction copies the top fraction.")
    resample_probability: float = Field(0.25, ge=0, le=1, description="Chance that a value is drawn afresh from the "
                                        "search space instead of perturbed (x 0.8 or x 1.2, a neighbouring choice).")
    synch: bool = Field(True, description="true: the whole population reaches each interval before any trial copies "
                        "another, so every copy is of a trial at the same env step and the population trains trials x "
                        "stop.env_steps in all; false: each trial at its own pace (Tune's default: a copy may take a "
                        "trial back or ahead in env steps).")


# The values that may change while a policy trains (a PBT search space's keys, an experiment's `schedules`):
# the update's, not the network's shape, the batch or the seeds
PERTURBABLE = ("ppo.lr", "ppo.gamma", "ppo.gae_lambda", "ppo.clip", "ppo.vf_clip", "ppo.vf_coef", "ppo.ent_coef",
               "ppo.max_grad_norm", "ppo.target_kl", "ppo.num_epochs", "ppo.minibatch_size")


# Confirmation seeds start this far from the experiment's seed: no search agent (seed .. seed + 63) has one
CONFIRM_SEED_OFFSET = 1_000_000


class SweepConfig(_Section):
    """How `rlsweep sweep` searches: Optuna through Ray Tune."""

    search_space: str = Field("search_spaces/ppo_core.yaml", description="Search space file (--space overrides).")
    trials: int = Field(16, ge=1, le=1_000_000, description="Trials to run.")
    max_concurrent: int | None = Field(None, ge=1, description="Trials at once (default: as many as the CPUs hold).")
    metric: str = Field("eval_return_mean", description="The metric the sampler and scheduler optimise.")
    mode: Literal["max", "min"] = Field("max", description="Maximise or minimise the metric.")
    sampler: Literal["tpe", "random", "cmaes", "gp"] = Field("tpe", description="Optuna sampler.")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Sampler seed.")
    n_startup_trials: int = Field(5, ge=0, description="Random trials before TPE/GP/CMA-ES model the space.")
    tpe_multivariate: bool = Field(True, description="TPE models parameters jointly.")
    tpe_constant_liar: bool = Field(True, description="TPE avoids re-suggesting what running trials try.")
    scheduler: Literal["fifo", "asha", "pbt"] = Field(
        "fifo", description="fifo runs every trial to its stop; asha stops weak ones early; pbt trains the trials as a "
        "population (sweep.pbt) whose weak members continue from strong ones with perturbed values (the initial "
        "population is drawn at random from the search space; sweep.sampler is not used).")
    grace_period: int = Field(10_000, ge=1, description="ASHA: env steps before a trial can be stopped early.")
    reduction_factor: float = Field(3.0, gt=1, description="ASHA: keep 1/reduction_factor at each rung.")
    pbt: PBTConfig = Field(default_factory=PBTConfig, description="PBT's settings (sweep.scheduler: pbt).")
    keep_checkpoints: int | None = Field(2, ge=1, description="Checkpoints kept per trial (best by metric); null keeps all.")
    time_budget_s: float | None = Field(None, gt=0, description="Stop the whole sweep after this many seconds.")
    study_storage: str | None = Field(None, description="Optuna storage URL (default: sqlite next to the results).")
    reuse_actors: bool = Field(True, description="Reuse trial actors between trials (reset_config).")
    confirm: ConfirmConfig | None = Field(None, description="After the search, run its `top` best configurations "
                                          "again on `seeds` fresh seeds each; the winner is the best confirmed.")
    seeds_per_trial: int = Field(1, ge=1, le=64, description="Agents each trial trains, on seeds seed, seed+1, ...: "
                                 "one stacked network, batched; the trial scores their interquartile mean.")

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, v: str) -> str:
        from rlsweep import metrics

        if v not in metrics.REPORTED:
            raise ValueError(f"unknown metric {v!r} (one of: {', '.join(sorted(metrics.REPORTED))})")
        return v


class TrackingConfig(_Section):
    """Where MLflow records runs."""

    uri: str | None = Field(None, description="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite).")
    experiment: str | None = Field(None, description="MLflow experiment name (default: the experiment's name).")
    local_dir: str = Field(".", description="Where the default store keeps mlflow.db and mlartifacts/.")
    log_checkpoints: bool = Field(True, description="Upload each trial's best and final checkpoint.")
    log_video: bool = Field(True, description="At a sweep's end, log a GIF of its winner's deterministic episode "
                            "to the parent run (winner.gif; an env that cannot render gets a note instead).")
    register_model: bool = Field(True, description="At a sweep's end, log its winner as an MLflow Model on the "
                                 "parent run and register it as a new version of `model_name`, alias `champion`.")
    model_name: str | None = Field(None, description="The registered model a sweep's winner becomes a version of "
                                   "(default: the MLflow experiment's name).")

    @field_validator("model_name")
    @classmethod
    def _a_name(cls, v: str | None) -> str | None:
        if v is not None and (not re.fullmatch(NAME_PATTERN, v) or set(v) <= {"."} or len(v) > 200):
            raise ValueError(f"{NAME_RULE} (at most 200)")
        return v
    flush_s: float = Field(2.0, ge=0, description="Write a trial's metrics to MLflow at least this often "
                           "(seconds; also at its checkpoints and end); 0 = every iteration.")
    outage_s: float = Field(300.0, gt=0, description="How long the store may stay unreachable (writes are "
                            "retried, metrics buffered, training goes on) before the run ends as interrupted.")
    checkpoint_wait_s: float = Field(10.0, ge=0, description="How long a checkpoint waits for the metrics before "
                                     "it to reach MLflow (longer only while the store is slow or down).")


class ExperimentConfig(_Section):
    """One experiment file."""

    name: str = Field(min_length=1, pattern=NAME_PATTERN, description="Experiment name.")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seeds the learner, every worker and evaluation.")
    results_dir: str = Field("results", min_length=1, description="Where Tune keeps trials and checkpoints: a "
                             "folder (on a cluster, one filesystem mounted at that path on every node), or a bucket, "
                             "s3://BUCKET/PREFIX[?endpoint_override=HOST:PORT&scheme=http].")
    checkpoint_frequency: int = Field(0, ge=0, description="Checkpoint every N iterations (0: at end).")
    max_failures: int = Field(
        1, ge=0, description="Restart a trial that failed (a crash, a lost node) up to this many times, from its "
        "last checkpoint (or its start), in the same MLflow run.")
    env: EnvConfig
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    rollouts: RolloutConfig = Field(default_factory=RolloutConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    stop: StopConfig
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    learners: LearnersConfig = Field(default_factory=LearnersConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    schedules: dict[str, list[tuple[int, float | None]]] = Field(
        default_factory=dict, description="Piecewise-constant schedules, e.g. `ppo.lr: [[0, 3.0e-4], [40960, "
        "1.0e-4]]`: from each env step on, the value given (the first at step 0). The keys that may change "
        "while training: " + ", ".join(PERTURBABLE) + ". `rlsweep best` writes a PBT winner's this way.")

    @field_validator("schedules")
    @classmethod
    def _schedules(cls, v: dict[str, list[tuple[int, float | None]]]) -> dict[str, list[tuple[int, float | None]]]:
        for key, points in v.items():
            if key not in PERTURBABLE:
                raise ValueError(f"{key!r} cannot change while training (keys that can: {', '.join(PERTURBABLE)})")
            steps = [step for step, _ in points]
            if not steps or steps[0] != 0 or any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
                raise ValueError(f"{key}: expected [[0, value], [env_step, value], ...] with increasing env steps "
                                 f"from 0 (got steps {steps})")
        return v

    @field_validator("results_dir")
    @classmethod
    def _a_path(cls, v: str) -> str:
        if v.startswith("s3://"):
            from rlsweep.tuning.bucket import Bucket

            try:
                Bucket.parse(v)
            except ConfigError as e:
                from pydantic_core import PydanticCustomError

                # (the URI is not echoed back: it may hold a key)
                raise PydanticCustomError(WITHHELD, str(e).removeprefix(f"results_dir {v}: ")
                                          .removeprefix("results_dir: ")) from None
        elif re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", v):
            raise ValueError("a folder or an s3:// URI expected: for another object store, mount it on every node "
                             "(gcsfuse, blobfuse) or use a shared filesystem")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> ExperimentConfig:
        envs = self.num_sampling_envs
        if self.ppo.train_batch_size % envs:
            raise ValueError(
                f"ppo.train_batch_size ({self.ppo.train_batch_size}) must be a multiple of "
                f"max(1, rollouts.num_rollout_workers) * rollouts.num_envs_per_worker ({envs})"
            )
        if self.ppo.anneal_lr and self.stop.env_steps is None:
            raise ValueError("ppo.anneal_lr needs stop.env_steps (the horizon to anneal over)")
        if self.evaluation.interval == 0:
            if self.stop.target_return is not None:
                raise ValueError("stop.target_return is on the evaluation mean: it needs evaluation.interval > 0")
            if self.sweep.metric.startswith("eval_"):
                raise ValueError(f"sweep.metric {self.sweep.metric} needs evaluation.interval > 0")
        budgets = {"env_steps_to_target": "env_steps", "time_to_target_s": "time_s"}
        if self.sweep.metric in budgets:
            budget = budgets[self.sweep.metric]
            if self.stop.target_return is None or getattr(self.stop, budget) is None:
                raise ValueError(f"sweep.metric {self.sweep.metric} needs stop.target_return (the target) and "
                                 f"stop.{budget} (the score of a trial that never reaches it): set both, or "
                                 "rank by another metric (e.g. sweep.metric=eval_return_mean with sweep.mode=max; "
                                 "`train` uses it to pick the best checkpoint)")
            if self.sweep.mode != "min":
                raise ValueError(f"sweep.metric {self.sweep.metric} is a cost: set sweep.mode: min")
        n = self.learners.num_learners
        if n and self.resources.learner_gpus > 0:
            raise ValueError("resources.learner_gpus is for an update in the trial's process; with "
                             "learners.num_learners > 0 ask for learners.gpus_per_learner instead")
        if self.sweep.confirm is not None and self.sweep.confirm.top > self.sweep.trials:
            raise ValueError(f"sweep.confirm.top ({self.sweep.confirm.top}) must be at most sweep.trials "
                             f"({self.sweep.trials}): it confirms that many of the search's best trials")
        if self.seed + self.sweep.seeds_per_trial - 1 > SEED_MAX:
            raise ValueError(f"seed + sweep.seeds_per_trial - 1 must be at most {SEED_MAX} (the last agent's seed)")
        if self.sweep.scheduler == "asha" and self.stop.env_steps is None:
            raise ValueError("sweep.scheduler asha needs stop.env_steps (the budget its rungs divide)")
        if self.sweep.scheduler == "pbt":
            if self.sweep.trials < 2:
                raise ValueError("sweep.scheduler pbt needs a population: sweep.trials of at least 2")
            if self.sweep.metric in ("env_steps_to_target", "time_to_target_s", "seeds_at_target"):
                raise ValueError(f"sweep.metric {self.sweep.metric} cannot rank a PBT population while it trains (every "
                                 "trial short of the target scores the same): set sweep.metric: eval_return_mean "
                                 "(sweep.mode: max) or another metric reported every iteration")
            if self.sweep.max_concurrent is not None and self.sweep.max_concurrent < self.sweep.trials:
                raise ValueError("sweep.max_concurrent: PBT creates its whole population at once (trials that do not "
                                 "fit the cluster take turns): remove sweep.max_concurrent, or lower sweep.trials")
        for key, points in self.schedules.items():  # every value the schedule takes makes a valid update
            leaf = key.split(".", 1)[1]
            for step, value in points:
                try:
                    PPOConfig.model_validate({**self.ppo.model_dump(), leaf: value})
                except ValidationError as e:
                    why = "; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors())
                    raise ValueError(f"schedules.{key}: the value {value!r} from env step {step}: {why}") from None
        return self

    def confirmation_seed(self) -> int:
        """The first of a confirmation trial's seeds: `CONFIRM_SEED_OFFSET` from `seed`, up or (near
        `SEED_MAX`) down, so that none is a search agent's."""
        n = self.sweep.confirm.seeds if self.sweep.confirm else 1
        up = self.seed + CONFIRM_SEED_OFFSET
        return up if up + n - 1 <= SEED_MAX else self.seed - CONFIRM_SEED_OFFSET

    @property
    def agent_seeds(self) -> list[int]:
        """The seeds of the agents one trial trains side by side: `seed`, `seed` + 1, ... (one per
        `sweep.seeds_per_trial`). Agent k of a trial is the agent a one-seed run on seed `seed` + k trains."""
        return list(range(self.seed, self.seed + self.sweep.seeds_per_trial))

    def bundles(self) -> list[tuple[dict[str, str], dict[str, float]]]:
        """What one trial asks Ray for, bundle by bundle, each with the keys that size it: the trainable,
        each rollout worker and the evaluation worker when sampling runs on actors, each learner actor
        (`trainable.resource_request` makes them a placement group). A bundle lands on one node."""
        r, n, ls = self.resources, self.rollouts.num_rollout_workers, self.learners
        out = [({"CPU": "resources.learner_cpus", "GPU": "resources.learner_gpus"},
                {"CPU": r.learner_cpus, **({"GPU": r.learner_gpus} if r.learner_gpus else {})})]
        if n:
            out += [({"CPU": "resources.worker_cpus"}, {"CPU": r.worker_cpus})] * n
            out += [({"CPU": "resources.evaluation_cpus"}, {"CPU": r.evaluation_cpus})]
        learner = {"CPU": ls.cpus_per_learner, **({"GPU": ls.gpus_per_learner} if ls.gpus_per_learner else {})}
        return out + [({"CPU": "learners.cpus_per_learner", "GPU": "learners.gpus_per_learner"}, learner)] * ls.num_learners

    @property
    def trial_cpus(self) -> float:
        """CPUs one trial holds: the sum over its bundles (`bundles`)."""
        return sum(b.get("CPU", 0.0) for _, b in self.bundles())

    @property
    def trial_gpus(self) -> float:
        """GPUs one trial holds: the sum over its bundles; 0 when it trains on CPUs."""
        return sum(b.get("GPU", 0.0) for _, b in self.bundles())

    def check_bundles_fit(self, nodes: list[dict[str, float]], where: str) -> None:
        """ConfigError when a bundle fits no node (Ray places a bundle on one node: it would wait
        forever); `nodes`: each node's resources."""
        for keys, bundle in self.bundles():
            want = {k: v for k, v in bundle.items() if v > 0}
            if any(all(n.get(k, 0.0) + 1e-9 >= v for k, v in want.items()) for n in nodes):
                continue
            named = " and ".join(f"{keys[k]} {v:g}" for k, v in want.items())
            asks = " and ".join(f"{v:g} {k}s" for k, v in want.items())
            most = " and ".join(f"{max((n.get(k, 0.0) for n in nodes), default=0.0):g} {k}s" for k in want)
            raise ConfigError(f"{named}: one process of a trial asks for {asks} on one node but no node {where} has "
                              f"that (the most on one: {most}): lower {' and '.join(keys[k] for k in want)}, or add "
                              "larger nodes")

    def check_fits(self, cpus: float, gpus: float | None, where: str) -> None:
        """ConfigError when one trial asks for more than `where` has (it would wait forever)."""
        r, n, ls = self.resources, self.rollouts.num_rollout_workers, self.learners
        if self.trial_cpus > cpus + 1e-9:
            parts = f"resources.learner_cpus {r.learner_cpus:g}"
            if n:
                parts += (f" + rollouts.num_rollout_workers {n} x resources.worker_cpus {r.worker_cpus:g}"
                          f" + resources.evaluation_cpus {r.evaluation_cpus:g}")
            if ls.num_learners:
                parts += f" + learners.num_learners {ls.num_learners} x learners.cpus_per_learner {ls.cpus_per_learner:g}"
            raise ConfigError(f"a trial asks for {self.trial_cpus:.10g} CPUs ({parts}) but {where} has {cpus:g}: "
                              "lower rollouts.num_rollout_workers, learners.num_learners or the CPU shares")
        if gpus is not None and self.trial_gpus > gpus + 1e-9:
            what = (f"resources.learner_gpus {r.learner_gpus:g}" if not ls.num_learners else
                    f"learners.num_learners {ls.num_learners} x learners.gpus_per_learner {ls.gpus_per_learner:g}")
            raise ConfigError(f"{what}: {where} has {gpus:g} GPUs (ask for 0 GPUs to train on the CPU)")

    @property
    def num_sampling_envs(self) -> int:
        """Envs stepped per iteration, all samplers together.

        With no rollout workers, the trainable's one sampler runs `num_envs_per_worker` of them.
        """
        return max(1, self.rollouts.num_rollout_workers) * self.rollouts.num_envs_per_worker

    @property
    def rollout_length(self) -> int:
        """Steps each env takes per iteration."""
        return self.ppo.train_batch_size // self.num_sampling_envs


# --------------------------------------------------------------------------------------------------
# Loading


def _format_loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if p not in ("function-after",))


def _section_keys(loc: tuple[Any, ...]) -> list[str]:
    """The valid keys of the section an unknown key was found in."""
    model: type[BaseModel] = ExperimentConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def explain(err: ValidationError, source: str) -> str:
    """One line per problem, naming the source, the key and what was expected."""
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        key = _format_loc(loc)
        if e["type"] == "extra_forbidden":
            valid = ", ".join(_section_keys(loc))
            lines.append(f"{source}: unknown key '{key}' (valid keys here: {valid})")
        elif e["type"] == "missing":
            lines.append(f"{source}: missing required key '{key}'")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = e.get("input")
            shown = "" if isinstance(got, dict) or e["type"] == WITHHELD else f" (got {got!r})"
            if not _format_loc(loc):  # a rule across keys: its message names them
                lines.append(f"{source}: {msg}")
            else:
                lines.append(f"{source}: key '{key}': {msg}{shown}")
    return "; ".join(lines)


def parse_override(item: str) -> tuple[list[str], Any]:
    """'stop.env_steps=20000' -> (['stop', 'env_steps'], 20000), the value read as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set stop.env_steps=20000")
    try:
        value = load_yaml_text(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        if isinstance(e, (yaml.composer.ComposerError, yaml.constructor.ConstructorError)):
            raise ConfigError(f"--set {item!r}: {getattr(e, 'problem', e)}") from None
        value = raw
    if isinstance(value, str):
        value = _number_or_str(value)
    return key.strip().split("."), value


def _number_or_str(raw: str) -> Any:
    # YAML 1.1 reads '1e-3' as a string; a user writing it means a number.
    try:
        f = float(raw)
    except ValueError:
        return raw
    return int(f) if f.is_integer() and "e" not in raw.lower() and "." not in raw else f


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Applies `--set KEY=VALUE` items (see `parse_override`) to raw config data, in order.

    Makes the sections a key names where missing, and validates nothing (`validate` does). Returns
    `data` itself, changed in place; a ConfigError when an item is not KEY=VALUE or a key goes through
    a value that is not a section.
    """
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item}: '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return data


class _StrictLoader(yaml.SafeLoader):
    """YAML as experiment files need it: no aliases (a file of nested aliases, a "billion laughs",
    expands without end) and no key twice in one mapping (the later value would silently win)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"aliases (*{event.anchor}) are not accepted: write the value out", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml_text(text: str) -> Any:
    """YAML text as plain data, with `_StrictLoader`'s rules (a yaml.YAMLError where they are broken)."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML file, as plain data.

    A ConfigError naming the file when it is missing, unreadable, not UTF-8, not valid YAML (with the
    line and column; aliases and a key twice in one mapping are refused) or not a mapping.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        data = load_yaml_text(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}): save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


def validate(data: dict[str, Any], source: str = "<config>") -> ExperimentConfig:
    """An `ExperimentConfig` from raw data (a file's, overrides applied).

    A ConfigError otherwise, naming `source` (where the data came from), each bad key and what was
    expected (see `explain`).
    """
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(explain(e, source)) from None


def load_experiment(
    path: str | Path, overrides: list[str] | None = None, seed: int | None = None
) -> ExperimentConfig:
    """Read, override and validate an experiment file."""
    data = apply_overrides(read_yaml(path), list(overrides or []))
    if seed is not None:
        data["seed"] = seed
    return validate(data, str(path))


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'ppo': {'lr': 1}} -> {'ppo.lr': 1}"""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
