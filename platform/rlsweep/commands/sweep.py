"""Sweeps: Optuna (define-by-run) through Ray Tune, every trial in MLflow, resumable.

A sweep lives in `<results_dir>/<name>/`: Tune's experiment state and trials, `optuna.db` (the
study, unless `sweep.study_storage` names another storage) and `rlsweep_sweep.json` (what `resume`
and `best` need).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlsweep import verbosity
from rlsweep.config import ConfigError, ExperimentConfig
from rlsweep.search_space import SearchSpace
from rlsweep.tracking.store import Store

SWEEP_FILE = "rlsweep_sweep.json"


@dataclass
class SweepPlan:
    """Everything a sweep needs, resolved and validated before Ray starts."""

    cfg: ExperimentConfig
    space: SearchSpace
    name: str
    directory: Path
    store: Store
    study_storage: str


def plan(cfg: ExperimentConfig, space: SearchSpace, name: str | None) -> SweepPlan:
    name = name or f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ConfigError(f"--name {name!r}: use letters, digits, '-', '_' and '.'")
    results = Path(cfg.results_dir).resolve()
    if results.exists() and not results.is_dir():
        raise ConfigError(f"results_dir {cfg.results_dir}: is a file, expected a folder")
    directory = results / name
    if directory.exists():
        raise ConfigError(f"sweep {name!r} already exists at {directory}: `rlsweep resume {name}` continues it, "
                          "or pick another --name")
    storage = cfg.sweep.study_storage or f"sqlite:///{directory / 'optuna.db'}"
    if cfg.sweep.study_storage and storage.startswith("sqlite:///"):
        folder = Path(storage.removeprefix("sqlite:///")).parent
        if not folder.is_dir():
            raise ConfigError(f"sweep.study_storage {storage}: folder {folder} does not exist")
    return SweepPlan(cfg, space, name, directory, Store.of(cfg), storage)


def find_sweep(name_or_path: str, results_dir: str = "results") -> Path:
    """A sweep directory from a path or a name under results_dir; ConfigError if there is none."""
    for candidate in (Path(name_or_path), Path(results_dir) / name_or_path):
        if (candidate / SWEEP_FILE).is_file():
            return candidate.resolve()
    raise ConfigError(f"no sweep {name_or_path!r}: neither a sweep directory nor a sweep under "
                      f"{Path(results_dir).resolve()}")


def read_meta(directory: Path, full: bool = False) -> dict[str, Any]:
    """The sweep's own record; a ConfigError when it is not what rlsweep wrote. `best` needs only the
    metric; `full`: everything `resume` needs."""
    try:
        meta = json.loads((directory / SWEEP_FILE).read_text())
    except (ValueError, UnicodeDecodeError, OSError):
        raise ConfigError(f"{directory / SWEEP_FILE}: not readable as a sweep record (corrupt or truncated)") from None
    keys = ("name", "metric", "mode") + (("experiment", "tracking_uri", "params", "trials") if full else ())
    missing = [k for k in keys if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise ConfigError(f"{directory / SWEEP_FILE}: not a sweep record (no {', '.join(missing)})")
    if full:
        try:
            ExperimentConfig.model_validate(meta["experiment"])
        except ValueError:
            raise ConfigError(f"{directory / SWEEP_FILE}: its experiment is not valid (edited or corrupt)") from None
    return meta


# --------------------------------------------------------------------------------------------------
# Running


def max_concurrent(cfg: ExperimentConfig) -> int:
    import ray

    from rlsweep.tuning.trainable import resource_request

    if cfg.sweep.max_concurrent:
        return cfg.sweep.max_concurrent
    per_trial = sum(b.get("CPU", 0) for b in resource_request(cfg).bundles)
    return max(1, math.floor(ray.cluster_resources().get("CPU", 1) / per_trial + 1e-9))


def run_sweep(p: SweepPlan) -> Any:
    import optuna
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

    from rlsweep import metrics as M
    from rlsweep.tracking.callback import MlflowCallback
    from rlsweep.tracking.sweep_parent import SweepParent
    from rlsweep.tuning import driver as tuning
    from rlsweep.tuning.searcher import make_sampler, searcher_class

    cfg, s = p.cfg, p.cfg.sweep
    optuna.logging.set_verbosity(verbosity.level())
    stopper = tuning.TrialStopper(cfg.stop)
    sweep_params = {"search_space": p.space.source, "trials": s.trials, "sampler": s.sampler, "sampler_seed": s.seed,
                    "scheduler": s.scheduler, "metric": s.metric, "mode": s.mode, "searched": ",".join(p.space.params)}
    parent = SweepParent(name=p.name, run_dir=str(p.directory), metric=s.metric, mode=s.mode,
                         searched=list(p.space.params), params=sweep_params, study=(p.study_storage, p.name),
                         time_budget_s=s.time_budget_s)
    tracker = MlflowCallback(p.store, str(p.directory), cfg, stopper.reason, sweep=parent)
    signer = tuning.SignTuneState(p.directory)
    # Ray first: a trial that can never fit is bad input, refused before the sweep's folder exists
    tuning.init_ray(tracker.open)
    tuning.check_cluster(cfg)
    try:
        p.directory.mkdir(parents=True)
    except FileExistsError:
        raise ConfigError(f"sweep {p.name!r} was created at {p.directory} meanwhile (another `rlsweep sweep "
                          f"--name {p.name}`?): pick another --name") from None
    try:  # the study first: if its storage cannot be opened, no half-made sweep is left to block the name
        storage = optuna.storages.RDBStorage(p.study_storage)
    except Exception as e:
        shutil.rmtree(p.directory, ignore_errors=True)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"sweep.study_storage {p.study_storage}: cannot be opened ({first})") from None
    record = p.directory / f".{SWEEP_FILE}.tmp"
    record.write_text(json.dumps({
        "name": p.name, "experiment": cfg.model_dump(mode="json"), "space": p.space.source,
        "params": list(p.space.params), "tracking_uri": p.store.uri, "study_storage": p.study_storage,
        "metric": s.metric, "mode": s.mode, "trials": s.trials, "time_budget_s": s.time_budget_s,
    }, indent=2))
    record.replace(p.directory / SWEEP_FILE)
    searcher = searcher_class()(
        space=p.space.suggest, metric=s.metric, mode=s.mode, sampler=make_sampler(cfg),
        study_name=p.name, storage=storage, check=p.space.check,
    )
    if s.scheduler == "asha":
        scheduler = ASHAScheduler(time_attr=M.ENV_STEPS, metric=s.metric, mode=s.mode, max_t=cfg.stop.env_steps,
                                  grace_period=s.grace_period, reduction_factor=s.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    concurrent = max_concurrent(cfg)
    sweep_params["max_concurrent"] = concurrent
    tuner = tune.Tuner(
        tuning.trainable_for(),
        param_space=cfg.model_dump(mode="json"),
        tune_config=tune.TuneConfig(
            num_samples=s.trials, search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrent),
            scheduler=scheduler, reuse_actors=s.reuse_actors, trial_dirname_creator=tuning.trial_dirname,
            time_budget_s=s.time_budget_s,
        ),
        run_config=tune.RunConfig(
            name=p.name, storage_path=str(p.directory.parent), stop=stopper,
            checkpoint_config=tune.CheckpointConfig(
                checkpoint_frequency=cfg.checkpoint_frequency, checkpoint_at_end=True,
                num_to_keep=s.keep_checkpoints, checkpoint_score_attribute=s.metric, checkpoint_score_order=s.mode,
            ),
            callbacks=[JsonLoggerCallback(), tracker, signer,
                       tuning.ProgressLine(sweep_trials=s.trials, metric=s.metric, mode=s.mode,
                                           searched=list(p.space.params), stop_reason=stopper.reason)],
            failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
            verbose=verbosity.tune_verbosity(),
        ),
    )
    try:
        return tuner.fit()
    finally:
        signer.signer.sign()  # Tune's last snapshot


def resume_sweep(directory: Path) -> Any:
    """Continues a sweep from its directory, once `integrity.verify` has made sure that Tune unpickles
    only what rlsweep signed."""
    from ray import tune

    from rlsweep.tuning import driver as tuning
    from rlsweep.tuning import retention
    from rlsweep.tuning.integrity import Signer, verify

    for note in verify(directory) + retention.restore(directory):
        print(f"rlsweep: {note}", file=sys.stderr)
    tuning.init_ray()
    # the cluster resumed on may be another one, or smaller than the one the sweep started on
    tuning.check_cluster(ExperimentConfig.model_validate(read_meta(directory, full=True)["experiment"]), directory)
    tuner = tune.Tuner.restore(str(directory), trainable=tuning.trainable_for(), resume_unfinished=True,
                               resume_errored=False)
    try:
        return tuner.fit()
    finally:
        Signer(directory).sign()
