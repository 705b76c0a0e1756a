"""`rlsweep sweep` and `rlsweep resume`: Optuna (define-by-run) through Ray Tune, every trial in
MLflow, resumable.

The story: `prepare` reads and checks everything a sweep is given before Ray starts; `run_sweep`
starts Ray, refuses a trial that can never fit, writes the sweep's record and runs the Tuner with the
Optuna searcher, the scheduler and the callbacks (MLflow, signing, the live line). `plan_resume` finds
an interrupted sweep and checks its record and store; `resume_sweep` verifies what Tune will unpickle
and runs it on. Both end in `outcome`: what MLflow recorded of the trials, and the ranked rows
(`ranking.ranked_rows`), as a `SweepOutcome` for the CLI to print.
"""

from __future__ import annotations

import logging
import math
import shlex
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlsweep import verbosity
from rlsweep.commands import inputs
from rlsweep.commands.record import SweepLock, SweepRecord, find_sweep
from rlsweep.config import ConfigError, ExperimentConfig, check_name
from rlsweep.search_space import SearchSpace, load_search_space
from rlsweep.tracking.store import Store


@dataclass
class SweepPlan:
    """Everything a sweep needs, resolved and validated before Ray starts."""

    cfg: ExperimentConfig
    space: SearchSpace
    name: str
    directory: Path
    store: Store
    study_storage: str
    storage: str  # where Tune stores it: `directory`'s parent, or the bucket it mirrors (`tuning.bucket`)


def plan(cfg: ExperimentConfig, space: SearchSpace, name: str | None) -> SweepPlan:
    """A new sweep of `cfg` over `space`, named `name` (default: `<experiment>-<date>-<time>`); a
    ConfigError where the name is taken or not usable, or the study storage cannot be."""
    from rlsweep.tuning import bucket

    name = name or f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_name(name, "--name")
    directory = inputs.results_dir(cfg) / name
    storage = str(directory.parent)
    if bucket.is_uri(cfg.results_dir):
        place, storage = bucket.Bucket.parse(cfg.results_dir).child(name), cfg.results_dir
        if bucket.exists(place):
            raise ConfigError(f"sweep {name!r} already exists at {place.location}: `rlsweep resume {name} "
                              f"--results-dir {shlex.quote(cfg.results_dir)}` continues it, or pick another --name")
        if directory.exists():  # a mirror of a sweep no longer in the bucket (unless it runs here)
            SweepLock(directory).acquire(name).release()
            shutil.rmtree(directory)
    if directory.exists():
        raise ConfigError(f"sweep {name!r} already exists at {directory}: `rlsweep resume {name}` continues it, "
                          "or pick another --name")
    study = cfg.sweep.study_storage or f"sqlite:///{directory / 'optuna.db'}"
    if cfg.sweep.study_storage and study.startswith("sqlite:///"):
        folder = Path(study.removeprefix("sqlite:///")).parent
        if not folder.is_dir():
            raise ConfigError(f"sweep.study_storage {study}: folder {folder} does not exist")
    return SweepPlan(cfg, space, name, directory, Store.of(cfg), study, storage)


def prepare(experiment: str, overrides: list[str], space: str | None = None, trials: int | None = None,
            name: str | None = None) -> SweepPlan:
    """Reads and checks everything `rlsweep sweep` is given (the experiment, the search space, the
    name, the store), before Ray starts.

    Args:
        experiment: the experiment YAML.
        overrides: `--set KEY=VALUE` strings.
        space: the search-space YAML (default: the experiment's `sweep.search_space`).
        trials: replaces `sweep.trials`.
        name: the sweep's name.
    """
    overrides = list(overrides) + ([f"sweep.trials={trials}"] if trials is not None else [])
    cfg = inputs.experiment(experiment, overrides)
    space_file = space or cfg.sweep.search_space
    p = plan(cfg, load_search_space(space_file, cfg.model_dump(mode="json"), experiment), name)
    inputs.store_uri(cfg)
    return p


def model_name(cfg: ExperimentConfig) -> str | None:
    """The registered model a sweep's winner becomes a version of (`tracking.register_model`), or None."""
    import re

    from rlsweep.tracking.store import experiment_name

    if not cfg.tracking.register_model:
        return None
    # (an MLflow experiment may be named "/Shared/x"; a registered model may not)
    return cfg.tracking.model_name or re.sub(r"[^A-Za-z0-9_.-]+", "-", experiment_name(cfg)).strip("-.") or "rlsweep"


def max_concurrent(cfg: ExperimentConfig) -> int:
    """`sweep.max_concurrent`, else as many trials as the Ray cluster's CPUs hold at once."""
    import ray

    from rlsweep.tuning.trainable import resource_request

    if cfg.sweep.max_concurrent:
        return cfg.sweep.max_concurrent
    per_trial = sum(b.get("CPU", 0) for b in resource_request(cfg).bundles)
    return max(1, math.floor(ray.cluster_resources().get("CPU", 1) / per_trial + 1e-9))


def run_sweep(p: SweepPlan) -> SweepOutcome:
    """Runs a planned sweep to its end (or Ctrl-C, or a lost store); what it came to."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    from rlsweep import metrics as M
    from rlsweep.tracking.callback import MlflowCallback
    from rlsweep.tracking.parents import SweepParent
    from rlsweep.tuning import bucket
    from rlsweep.tuning.full_disk import StopOnFullDisk, fit
    from rlsweep.tuning.pbt import initial_population
    from rlsweep.tuning.pbt import scheduler as pbt_scheduler
    from rlsweep.tuning.progress import ProgressLine
    from rlsweep.tuning.ray_session import check_cluster, init_ray
    from rlsweep.tuning.searcher import make_sampler, searcher_class
    from rlsweep.tuning.signing import SignTuneState
    from rlsweep.tuning.stopper import TrialStopper
    from rlsweep.tuning.trainable import trainable_for, trial_dirname

    cfg, s = p.cfg, p.cfg.sweep
    optuna.logging.set_verbosity(verbosity.level())
    stopper = TrialStopper(cfg.stop, cfg.sweep.seeds_per_trial)
    pbt = s.scheduler == "pbt"
    sweep_params = {"search_space": p.space.source, "trials": s.trials, "sampler": "random" if pbt else s.sampler,
                    "sampler_seed": s.seed, "scheduler": s.scheduler, "metric": s.metric, "mode": s.mode,
                    "searched": ",".join(p.space.params)}
    if pbt:
        sweep_params.update({f"pbt_{k}": v for k, v in s.pbt.model_dump().items()})
    place = bucket.Bucket(p.storage).child(p.name) if bucket.is_uri(p.storage) else None  # (a sweep in a bucket)
    # what MLflow's runs name the sweep by (`rlsweep.dir`): its bucket place, or its folder
    run_dir = place.uri if place is not None else str(p.directory)
    parent = SweepParent(name=p.name, run_dir=run_dir, metric=s.metric, mode=s.mode,
                         searched=list(p.space.params), params=sweep_params,
                         study=None if pbt else (p.study_storage, p.name),
                         time_budget_s=s.time_budget_s, confirm=s.confirm is not None, target=cfg.stop.target_return,
                         video=cfg.tracking.log_video, model_name=model_name(cfg))
    full_disk = StopOnFullDisk(p.directory.parent)
    tracker = MlflowCallback(p.store, run_dir, cfg, stopper.reason, parent, full_disk.reason)
    signer = SignTuneState(p.directory)
    # PBT's initial population, drawn before anything is made (a space that gives no valid draw is bad input)
    population = initial_population(p.space, cfg.model_dump(mode="json"), s.trials, s.seed) if pbt else []
    # Ray first: a trial that can never fit is bad input, refused before the sweep's folder exists
    init_ray(tracker.open, bucket=place is not None)
    check_cluster(cfg)
    try:
        p.directory.mkdir(parents=True)
    except FileExistsError:
        raise ConfigError(f"sweep {p.name!r} was created at {p.directory} meanwhile (another `rlsweep sweep "
                          f"--name {p.name}`?): pick another --name") from None
    if place is not None:
        bucket.claim(p.directory, place)
    lock = SweepLock(p.directory).acquire(p.name)  # held until this process ends
    # the study first: if its storage cannot be opened, no half-made sweep is left to block the name
    storage = None if pbt else _open_study(p)  # (PBT draws its population itself: no study)
    SweepRecord.write(p.directory, {
        "name": p.name, "experiment": cfg.model_dump(mode="json"), "space": p.space.source,
        "params": list(p.space.params), "tracking_uri": p.store.uri, "study_storage": p.study_storage,
        "metric": s.metric, "mode": s.mode, "trials": s.trials, "time_budget_s": s.time_budget_s,
    })
    if place is not None:  # the record and the study in the bucket before any trial
        bucket.Mirror(p.directory, place).push_changed()
    concurrent = max_concurrent(cfg)
    if pbt:  # a population: every member created at once, taking turns where the cluster holds fewer
        # (Tune warns about each drawn value that differs from the experiment's: all of them, by design)
        logging.getLogger("ray.tune.search.variant_generator").setLevel(logging.ERROR)
        search_alg = BasicVariantGenerator(points_to_evaluate=population)
    else:
        search_alg = ConcurrencyLimiter(searcher_class()(
            space=p.space.suggest, metric=s.metric, mode=s.mode, sampler=make_sampler(cfg),
            study_name=p.name, storage=storage, check=p.space.check, report_every_s=cfg.tracking.flush_s,
        ), max_concurrent=concurrent)
    if pbt:
        scheduler = pbt_scheduler(cfg, p.space)
    elif s.scheduler == "asha":
        scheduler = ASHAScheduler(time_attr=M.ENV_STEPS, metric=s.metric, mode=s.mode, max_t=cfg.stop.env_steps,
                                  grace_period=s.grace_period, reduction_factor=s.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    sweep_params["max_concurrent"] = concurrent
    tuner = tune.Tuner(
        trainable_for(),
        param_space=cfg.model_dump(mode="json"),
        tune_config=tune.TuneConfig(
            num_samples=s.trials, search_alg=search_alg,
            scheduler=scheduler, reuse_actors=s.reuse_actors, trial_dirname_creator=trial_dirname,
            time_budget_s=s.time_budget_s,
        ),
        run_config=_run_config(cfg, p.name, p.storage, stopper, tracker, signer, full_disk,
                               ProgressLine(sweep_trials=s.trials, metric=s.metric, mode=s.mode,
                                            searched=list(p.space.params), stop_reason=stopper.reason)),
    )
    try:
        try:
            fit(tuner, p.directory)
        finally:
            signer.signer.sign()  # Tune's last snapshot
        record = SweepRecord.read(p.directory, full=True)
        if cfg.sweep.confirm is not None and search_done(record):
            run_confirmation(record)
    finally:
        lock.release()
    return outcome(record)


def _open_study(p: SweepPlan) -> Any:
    """The sweep's Optuna storage, its study made (so that optuna-dashboard names its objective, not
    "Objective 0"); a ConfigError, the sweep's folder removed, where the storage cannot be opened."""
    import optuna

    s = p.cfg.sweep
    try:
        storage = optuna.storages.RDBStorage(p.study_storage)
        study = optuna.create_study(storage=storage, study_name=p.name, load_if_exists=True,
                                    direction="minimize" if s.mode == "min" else "maximize")
        with warnings.catch_warnings():  # "set_metric_names is experimental": a warning on every sweep
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([s.metric])
    except Exception as e:
        shutil.rmtree(p.directory, ignore_errors=True)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"sweep.study_storage {p.study_storage}: cannot be opened ({first})") from None
    return storage


def _run_config(cfg: ExperimentConfig, name: str, storage_path: str, stopper: Any, tracker: Any, signer: Any,
                full_disk: Any, progress: Any) -> Any:
    """Tune's RunConfig of a sweep's Tune run (its search, or its confirmation round)."""
    from ray import tune

    from rlsweep.tuning.result_log import TrialResultLog
    from rlsweep.tuning.stopper import NoRetryAfterDivergence

    s = cfg.sweep
    return tune.RunConfig(
        name=name, storage_path=storage_path, stop=stopper,
        checkpoint_config=tune.CheckpointConfig(
            checkpoint_frequency=cfg.checkpoint_frequency, checkpoint_at_end=True,
            # (under PBT a trial may continue from any other's latest checkpoint: none is deleted)
            num_to_keep=None if s.scheduler == "pbt" else s.keep_checkpoints, checkpoint_score_attribute=s.metric,
            checkpoint_score_order=s.mode,
        ),
        callbacks=[TrialResultLog(), tracker, signer, NoRetryAfterDivergence(), full_disk, progress],
        failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
        verbose=verbosity.tune_verbosity(),
    )


def search_done(record: SweepRecord) -> bool:
    """Whether the sweep's search ended with every trial run (not interrupted) and a winner to confirm,
    as its parent run says, and the sweep has not finished: then its confirmation round
    (`sweep.confirm`) is due, under way or interrupted."""
    from rlsweep.tracking.runs import TAG_DIR, TAG_KIND, TAG_PHASE, TAG_STATUS
    from rlsweep.tracking.status import RunStatus
    from rlsweep.tuning.bucket import tag_of

    try:
        tracker = record.store().tracker()
        parent = tracker.find(**{TAG_KIND: "sweep", TAG_DIR: tag_of(record.directory)})
        tags = tracker.tags(parent) if parent else {}
    except Exception:  # noqa: BLE001 - the store went away: `outcome` says so
        return False
    return tags.get(TAG_PHASE) == "confirm" and tags.get(TAG_STATUS) != RunStatus.FINISHED


def confirmation_configs(record: SweepRecord) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """What the confirmation round retrains: the search's `sweep.confirm.top` best trials (their ids and
    numbers) and their configurations, each on `sweep.confirm.seeds` fresh seeds (from
    `ExperimentConfig.confirmation_seed`, which no search agent used)."""
    from rlsweep import metrics as M
    from rlsweep.config import validate
    from rlsweep.engine.schedules import replayed
    from rlsweep.ranking import ranked_rows
    from rlsweep.tuning.bucket import refresh

    cfg = record.cfg
    confirm = cfg.sweep.confirm
    refresh(record.directory)
    top = ranked_rows(record.directory, record.metric, record.mode)[: confirm.top]
    configs = []
    for row in top:
        c = replayed(dict(row["config"]), row.get(M.HP_HISTORY))  # a PBT trial: its values over the run
        c["seed"] = cfg.confirmation_seed()
        c["sweep"] = {**c["sweep"], "seeds_per_trial": confirm.seeds}
        configs.append(validate(c, f"confirmation of trial {row['number']}").model_dump(mode="json"))
    return [r["trial_id"] for r in top], [r["number"] for r in top], configs


def run_confirmation(record: SweepRecord) -> None:
    """The sweep's confirmation round, in `<sweep>/confirm`: started, or resumed where it was cut off.
    Its trials are child runs of the sweep's parent run (`rlsweep.phase` = confirm); at its end the
    parent is summarised again, the winner chosen by the confirmed score, and finished."""
    import json

    from ray import tune

    from rlsweep.ranking import CONFIRM_DIR, CONFIRM_ORDER, confirmation_order
    from rlsweep.tracking.callback import MlflowCallback
    from rlsweep.tracking.parents import SweepParent
    from rlsweep.tuning import bucket
    from rlsweep.tuning.full_disk import StopOnFullDisk, fit
    from rlsweep.tuning.integrity import verify
    from rlsweep.tuning.progress import ProgressLine
    from rlsweep.tuning.searcher import fixed_configs_searcher
    from rlsweep.tuning.signing import SignTuneState
    from rlsweep.tuning.stopper import TrialStopper
    from rlsweep.tuning.trainable import trainable_for, trial_dirname

    cfg, directory = record.cfg, record.directory
    confirm_dir = directory / CONFIRM_DIR
    if (confirm_dir / "tuner.pkl").is_file():  # cut off: it goes on (its Tune state verified first)
        from rlsweep.tuning import retention

        for note in verify(confirm_dir) + retention.restore(confirm_dir):
            print(f"rlsweep: {note}", file=sys.stderr)
        bucket.push_fixes(confirm_dir)
        tuner = tune.Tuner.restore(bucket.storage_of(confirm_dir), trainable=trainable_for(), resume_unfinished=True,
                                   resume_errored=False)
        try:
            fit(tuner, confirm_dir)
        finally:
            SignTuneState(confirm_dir).signer.sign()
        return
    ids, numbers, configs = confirmation_configs(record)
    if confirmation_order(directory) not in ([], ids):
        raise ConfigError(f"{confirm_dir}: holds another confirmation round's order (edited?)")
    confirm_dir.mkdir(exist_ok=True)
    order = confirm_dir / CONFIRM_ORDER  # whole or not at all: every ranking reads it
    tmp = order.with_name(f".{order.name}.tmp")
    tmp.write_text(json.dumps(ids))
    tmp.replace(order)
    print(f"confirming the best {len(configs)} configuration(s) on {cfg.sweep.confirm.seeds} fresh seeds each "
          f"(from {cfg.confirmation_seed()})", file=sys.stderr, flush=True)
    s = cfg.sweep
    stopper = TrialStopper(cfg.stop, s.confirm.seeds)
    parent = SweepParent(name=record.name, run_dir=bucket.tag_of(directory), metric=s.metric, mode=s.mode,
                         searched=list(record.params), time_budget_s=None, confirm=True,
                         confirms=tuple(zip(ids, numbers, strict=True)), target=cfg.stop.target_return,
                         video=cfg.tracking.log_video, model_name=model_name(cfg))
    full_disk = StopOnFullDisk(directory.parent)
    tracker = MlflowCallback(record.store(), bucket.tag_of(confirm_dir), cfg, stopper.reason, parent, full_disk.reason)
    signer = SignTuneState(confirm_dir)
    progress = ProgressLine(sweep_trials=len(configs), metric=s.metric, mode=s.mode, searched=list(record.params),
                            stop_reason=stopper.reason, title="confirmation", confirms=numbers)
    tuner = tune.Tuner(
        trainable_for(),
        param_space=configs[0],
        tune_config=tune.TuneConfig(
            num_samples=len(configs), search_alg=fixed_configs_searcher(configs, s.metric, s.mode),
            reuse_actors=s.reuse_actors, trial_dirname_creator=trial_dirname,
            max_concurrent_trials=max_concurrent(cfg.model_copy(update={"sweep": s.model_copy(
                update={"seeds_per_trial": s.confirm.seeds})})),
        ),
        run_config=_run_config(cfg, CONFIRM_DIR, bucket.storage_of(directory), stopper, tracker, signer, full_disk,
                               progress),
    )
    try:
        fit(tuner, confirm_dir)
    finally:
        signer.signer.sign()


@dataclass(frozen=True)
class ResumePlan:
    """An interrupted sweep to resume, its lock held by this process; `finished`: it has finished
    (nothing to resume)."""

    record: SweepRecord
    finished: bool = False
    lock: SweepLock | None = None


def plan_resume(name_or_path: str, results_dir: str = "results") -> ResumePlan:
    """Finds the sweep, reads its record (once) and opens its store, before Ray starts."""
    from rlsweep.tracking.runs import TAG_DIR, TAG_KIND, TAG_STATUS
    from rlsweep.tracking.status import RunStatus
    from rlsweep.tracking.store import check_store, take_credentials
    from rlsweep.tuning import bucket

    directory = find_sweep(name_or_path, results_dir)
    record = SweepRecord.read(directory, full=True)
    lock = SweepLock(directory).acquire(record.name)  # a sweep another process runs is not touched
    if (place := bucket.remote_of(directory)) is not None:  # the bucket's state, whatever this mirror held
        from rlsweep.tuning.integrity import take_backup_manifest

        bucket.pull(place, directory, remote_wins=True)
        take_backup_manifest(directory)
    check_store(take_credentials(record.tracking_uri))
    tracker = record.store().tracker()
    parent = tracker.find(**{TAG_KIND: "sweep", TAG_DIR: bucket.tag_of(directory)})
    finished = parent is not None and tracker.tags(parent).get(TAG_STATUS) == RunStatus.FINISHED
    return ResumePlan(record, finished, lock)


def resume_sweep(p: ResumePlan) -> SweepOutcome:
    """Continues an interrupted sweep from its directory, once `integrity.verify` has made sure that
    Tune unpickles only what rlsweep signed; what it came to."""
    from ray import tune

    from rlsweep.commands.legacy import accept_moved_names
    from rlsweep.tuning import bucket, retention
    from rlsweep.tuning.full_disk import fit
    from rlsweep.tuning.integrity import Signer, verify
    from rlsweep.tuning.ray_session import check_cluster, init_ray
    from rlsweep.tuning.trainable import trainable_for

    directory = p.record.directory

    for note in verify(directory) + retention.restore(directory):
        print(f"rlsweep: {note}", file=sys.stderr)
    bucket.push_fixes(directory)  # a mirrored sweep: what Tune downloads is what was verified
    init_ray(bucket=bucket.remote_of(directory) is not None)
    # the cluster resumed on may be another one, or smaller than the one the sweep started on
    check_cluster(p.record.cfg, bucket.storage_of(directory))
    accept_moved_names()  # a sweep started before the package took its folders

    try:
        if not search_done(p.record):  # the search was cut off: it goes on
            tuner = tune.Tuner.restore(bucket.storage_of(directory), trainable=trainable_for(), resume_unfinished=True,
                                       resume_errored=False)
            try:
                fit(tuner, directory)
            finally:
                Signer(directory).sign()
        if p.record.cfg.sweep.confirm is not None and search_done(p.record):
            run_confirmation(p.record)
    finally:
        if p.lock is not None:
            p.lock.release()
    return outcome(p.record)


@dataclass
class SweepOutcome:
    """What a sweep came to, as MLflow records it (the statuses the tracker wrote, not Tune's, which
    calls a trial stopped by Ctrl-C 'TERMINATED').

    Args:
        record: the sweep's record.
        finished: the sweep's parent run says it finished (else it was interrupted).
        store_error: the tracking store could not be read afterwards (why, in one line).
        done: trials over for good (finished, stopped early or failed); `failed`: of them, failed.
        rows: the trials with the metric, best first (`ranking.ranked_rows`).
        runs: trial id -> its MLflow run id.
        confirmation_runs: a confirmation trial's id -> its MLflow run id.
        experiment_id: the MLflow experiment's id; `parent_run_id`: the sweep's parent run, `parent_tags`
            its tags (its registered model and video among them).
    """

    record: SweepRecord
    finished: bool = False
    store_error: str | None = None
    done: int = 0
    failed: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    runs: dict[str, str] = field(default_factory=dict)
    confirmation_runs: dict[str, str] = field(default_factory=dict)
    experiment_id: str | None = None
    parent_run_id: str | None = None
    parent_tags: dict[str, str] = field(default_factory=dict)

    @property
    def best(self) -> dict[str, Any] | None:
        """The best trial's row, or None where no trial reported the metric."""
        return self.rows[0] if self.rows else None

    @property
    def out_of_time(self) -> bool:
        """The sweep's time budget ended it before all its trials ran."""
        return bool(self.finished and self.record.time_budget_s and self.done < (self.record.trials or 0))


def outcome(record: SweepRecord) -> SweepOutcome:
    """What the sweep in `record.directory` came to: its MLflow statuses and its ranked rows."""
    from rlsweep.ranking import CONFIRM_DIR, ranked_rows
    from rlsweep.tracking.runs import TAG_DIR, TAG_KIND, TAG_STATUS, TAG_TRIAL
    from rlsweep.tracking.status import RunStatus
    from rlsweep.tuning.bucket import refresh, tag_of

    directory = tag_of(record.directory)
    try:
        refresh(record.directory)  # a mirrored sweep: what Tune stored in its bucket
    except (ConfigError, OSError) as e:
        print(f"rlsweep: {e}; ranking what this machine holds of it", file=sys.stderr)
    try:
        tracker = record.store().tracker()
        parent = tracker.find(**{TAG_KIND: "sweep", TAG_DIR: directory})
        children = {r.tags.get(TAG_TRIAL): r for r in tracker.search(**{TAG_KIND: "trial", TAG_DIR: directory})}
        confirming = {r.tags.get(TAG_TRIAL): r.run_id
                      for r in tracker.search(**{TAG_KIND: "trial", TAG_DIR: tag_of(record.directory / CONFIRM_DIR)})}
        parent_tags = tracker.tags(parent) if parent else {}
        parent_status = parent_tags.get(TAG_STATUS)
    except Exception as e:  # noqa: BLE001 - the store went away: what Tune saved is still resumable
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        return SweepOutcome(record, store_error=first)
    statuses = [r.tags.get(TAG_STATUS) for r in children.values()]
    done = sum(RunStatus(s).done for s in statuses if s in set(RunStatus))
    finished = parent_status == RunStatus.FINISHED
    return SweepOutcome(
        record, finished=finished, done=done, failed=statuses.count(RunStatus.ERROR),
        # an interrupted sweep is ranked once it has finished (a result cut off by a kill is rewritten
        # when its trial runs again)
        rows=ranked_rows(record.directory, record.metric, record.mode) if finished else [],
        runs={tid: r.run_id for tid, r in children.items() if tid},
        confirmation_runs={tid: run for tid, run in confirming.items() if tid}, experiment_id=tracker.experiment_id,
        parent_run_id=parent, parent_tags=parent_tags)
