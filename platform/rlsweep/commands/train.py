"""`rlsweep train`: one trial of an experiment through a Ray Tune Tuner, tracked as one MLflow run.

The story: read the experiment and any `--restore` checkpoint (verified once), open the store, start
Ray and check that the trial fits, run the Tuner with the MLflow callback and the live line, and
return a `TrainOutcome` for the CLI to print.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlsweep.commands import inputs
from rlsweep.config import ConfigError, ExperimentConfig


@dataclass
class TrainOutcome:
    """How a `train` run ended.

    Args:
        run_id: its MLflow run (None where none was created).
        metrics: its last result.
        checkpoint: its last checkpoint folder.
        stop_reason: the stop criterion it met (None: none).
        error: the error that ended it, in one line.
        trial_dir: Tune's trial folder.
        store: the MLflow store's URI.
        interrupted: cut short (Ctrl-C, SIGTERM, the store went away).
        why_interrupted: when it was not a signal (the tracking store went away).
        started: False where it was cut short before the trial started (waiting for resources, say).
    """

    run_id: str | None
    metrics: dict[str, Any]
    checkpoint: str | None
    stop_reason: str | None
    error: str | None
    trial_dir: str
    store: str = ""
    interrupted: bool = False
    why_interrupted: str | None = None
    started: bool = True


def train(experiment: str, overrides: list[str], seed: int | None = None, restore: str | None = None,
          seeds: int | None = None) -> TrainOutcome:
    """Runs `rlsweep train`.

    Args:
        experiment: the experiment YAML.
        overrides: `--set KEY=VALUE` strings.
        seed: replaces the experiment's seed.
        restore: a checkpoint to continue from: a folder, an MLflow artifact URI or registered model,
            or a place in a bucket (`s3://...`, as a run kept in one prints its checkpoint).
        seeds: train this many agents side by side (seeds `seed`, `seed` + 1, ...). By default one:
            the experiment's `sweep.seeds_per_trial` is for its sweeps (a `--set` of it counts).

    Returns:
        How the run ended.
    """
    if seeds is not None:
        if not 1 <= seeds <= 64:
            raise ConfigError(f"--seeds {seeds}: expected a whole number from 1 to 64")
        overrides = [*overrides, f"sweep.seeds_per_trial={seeds}"]
    elif not any(o.split("=", 1)[0].strip() == "sweep.seeds_per_trial" for o in overrides):
        overrides = [*overrides, "sweep.seeds_per_trial=1"]
    cfg = inputs.experiment(experiment, overrides, seed=seed)
    local = None
    if restore and not inputs.is_remote(restore):  # a bad local checkpoint is refused before the store opens
        local = inputs.Checkpoint.verified(restore, restore, cfg)
    uri = inputs.store_uri(cfg)
    with tempfile.TemporaryDirectory(prefix="rlsweep-checkpoint-") as scratch:
        if restore and local is None:
            local = inputs.Checkpoint.verified(restore, inputs.fetch(restore, uri, scratch), cfg)
        out = run_train(cfg, restore_from=local.path if local else None, tags=local.restore_tags() if local else None)
    out.store = uri
    return out


def run_train(cfg: ExperimentConfig, restore_from: str | None = None, tags: dict[str, str] | None = None) -> TrainOutcome:
    """One trial of `cfg` through a Tuner; returns its last metrics and checkpoint.

    Args:
        cfg: the experiment, validated.
        restore_from: a local checkpoint folder, verified, to start from.
        tags: more tags for the MLflow run.
    """
    from ray import tune

    from rlsweep import timeline, verbosity
    from rlsweep.tracking.callback import MlflowCallback
    from rlsweep.tracking.parents import SingleRun
    from rlsweep.tracking.runs import error_line
    from rlsweep.tracking.store import Store
    from rlsweep.tuning import bucket
    from rlsweep.tuning.full_disk import StopOnFullDisk, fit
    from rlsweep.tuning.progress import ProgressLine
    from rlsweep.tuning.ray_session import check_cluster, init_ray
    from rlsweep.tuning.result_log import TrialResultLog
    from rlsweep.tuning.stopper import NoRetryAfterDivergence, TrialStopper
    from rlsweep.tuning.trainable import trainable_for, trial_dirname

    # a bucket (`s3://`): Tune stores there, the run's journal is kept in its mirror here (`tuning.bucket`)
    remote = bucket.is_uri(cfg.results_dir)
    local = bucket.Bucket.parse(cfg.results_dir).mirror() if remote else Path(cfg.results_dir).resolve()
    storage = cfg.results_dir if remote else str(local)
    name = f"train-{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    stopper = TrialStopper(cfg.stop, cfg.sweep.seeds_per_trial)
    full_disk = StopOnFullDisk(storage)
    tracker = MlflowCallback(Store.of(cfg), str(local / name), cfg, stopper.reason, SingleRun(dict(tags or {})),
                             full_disk.reason)
    init_ray(tracker.open, bucket=remote)
    check_cluster(cfg)
    tuner = tune.Tuner(
        trainable_for(restore_from),
        param_space=cfg.model_dump(mode="json"),
        tune_config=tune.TuneConfig(num_samples=1, trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            stop=stopper,
            checkpoint_config=tune.CheckpointConfig(
                checkpoint_frequency=cfg.checkpoint_frequency, checkpoint_at_end=True
            ),
            callbacks=[TrialResultLog(), tracker, NoRetryAfterDivergence(), full_disk, ProgressLine()],
            failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
            verbose=verbosity.tune_verbosity(),
        ),
    )
    timeline.mark("fit_starting")
    result = fit(tuner, local / name)[0]
    timeline.mark("fit_done")
    metrics = dict(result.metrics or {})
    return TrainOutcome(
        run_id=next(iter(tracker.runs.values()), None),
        metrics=metrics,
        checkpoint=(bucket.uri_of(result.checkpoint.path, cfg.results_dir) if remote else result.checkpoint.path)
        if result.checkpoint else None,
        stop_reason=stopper.reason(metrics),
        error=None if result.error is None else error_line(str(result.error)) or type(result.error).__name__,
        trial_dir=str(result.path),
        interrupted=tracker.interrupted,
        why_interrupted=str(tracker.tracking_lost) if tracker.tracking_lost is not None else full_disk.why,
        started=tracker.started,
    )
