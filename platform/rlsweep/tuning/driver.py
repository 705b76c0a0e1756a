"""Ray Tune plumbing: starting Ray, stop criteria, progress, and the Tuner for a single trial."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.logger import JsonLoggerCallback

from rlsweep import metrics as M
from rlsweep import verbosity
from rlsweep.config import ConfigError, ExperimentConfig, StopConfig
from rlsweep.interrupts import interrupt_on_termination
from rlsweep.tracking.store import better, error_line, trial_error_line, trial_number, trial_run_name
from rlsweep.tuning.integrity import Signer
from rlsweep.tuning.retention import Retainer
from rlsweep.tuning.storage import check_shared_storage
from rlsweep.tuning.trainable import PPOTrainable, resource_request


def _warm_imports() -> None:
    # Tune imports its MLflow/W&B/Comet integrations (mlflow alone takes ~2 s) to count callbacks for
    # usage stats whenever callbacks are given. ray.init mostly waits on the processes it starts, so
    # importing them on a thread meanwhile takes that off the critical path.
    import ray.air._internal.usage as usage

    usage._count_callbacks([])


# Credentials only the driver uses (MLflow's, and the object store's behind it): Ray's processes
# inherit the environment of the process that starts them, and Tune copies the AWS ones into every
# trial actor's runtime env, which Ray writes to a log file under its temp folder.
SECRET_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
              "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
              "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCESS_KEY")


@contextlib.contextmanager
def _secrets_kept_from_ray() -> Iterator[None]:
    """Starts Ray's processes without the driver's credentials, and stops Tune from copying them into
    trial actors (results storage is local: the trials need none)."""
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE.difference_update(SECRET_ENV)
    saved = {k: os.environ.pop(k) for k in SECRET_ENV if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


WAIT_ENV = "RLSWEEP_WAIT_FOR_RESOURCES"  # set by --wait-for-resources

# Whether a trial does not fit the cluster as it is now (check_cluster): the live line then calls
# pending trials waiting for resources; otherwise they are only starting (Tune holds a trial pending
# while its actors start, also on a local Ray).
_short_of_resources = False


Sizes = tuple[dict[str, float], list[dict[str, float]]]  # (all nodes together, each node's resources)


def _cluster_now() -> Sizes:
    return ray.cluster_resources(), [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]


def _autoscaling_ceiling(now: Sizes) -> Sizes | None:
    """What the joined cluster may grow to, where its autoscaler's node groups (their node sizes and
    most nodes) are in Ray's GCS; None where they are not (`ray start` nodes; also Ray's own
    autoscaler in Ray 2.60, which does not report them). The head node is counted as it is now and
    beside the groups (a group for it would count it twice: too much, never too little)."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # an internal API: where it is missing or fails, no ceiling is known
        return None
    groups = [g for g in (config.node_group_configs if config is not None else []) if g.max_count != 0]
    if not groups:
        return None
    heads = [r for r in now[1] if "node:__internal_head__" in r]
    total = {k: sum(r.get(k, 0.0) for r in heads) for k in ("CPU", "GPU")}
    for g in groups:
        for k, v in g.resources.items():
            if v > 0:
                total[k] = math.inf if g.max_count < 0 else total.get(k, 0.0) + g.max_count * v
    for k, cap in config.max_resources.items():
        total[k] = min(total.get(k, 0.0), float(cap))
    return total, [*now[1], *({k: float(v) for k, v in g.resources.items()} for g in groups)]


def _wait_asked() -> bool:
    return os.environ.get(WAIT_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def check_cluster(cfg: ExperimentConfig, storage: str | Path | None = None) -> None:
    """A trial that can never fit is bad input (Tune would wait for it forever): on the Ray rlsweep
    started, and on a joined cluster (RAY_ADDRESS, --address) that cannot grow enough (its
    autoscaler's node groups, where Ray has them, or none); by all its bundles together, and bundle
    by bundle against each node. A trial that does not fit a joined cluster now but could once nodes
    are added (or the user says they will be: --wait-for-resources) is said once, and waits. Every
    node of a joined cluster must reach `storage` (default: `results_dir`)."""
    if not os.environ.get("RAY_ADDRESS"):
        have = ray.cluster_resources()
        cfg.check_fits(have.get("CPU", 0.0), have.get("GPU", 0.0), "the local Ray")
        return

    def fits(sizes: Sizes, where: str, nodes: str) -> None:
        total, each = sizes
        cfg.check_fits(total.get("CPU", 0.0), total.get("GPU", 0.0), where)
        cfg.check_bundles_fit(each, nodes)

    global _short_of_resources
    now = _cluster_now()
    try:
        fits(now, "the cluster now", "of the cluster now")
    except ConfigError as short:
        _short_of_resources = True
        ceiling = _autoscaling_ceiling(now)
        if not _wait_asked():
            if ceiling is None:
                raise ConfigError(f"{short} (Ray knows of no autoscaler for this cluster; if one adds nodes, pass "
                                  "--wait-for-resources)") from None
            fits(ceiling, "the cluster at its autoscaler's largest", "of the cluster or that its autoscaler adds")
        print(f"rlsweep: {short}; its trials wait until nodes are added (Ctrl-C stops)", file=sys.stderr)
    check_shared_storage(str(storage or cfg.results_dir))


def _no_tune_interrupt_recipe(record: logging.LogRecord) -> bool:
    text = str(record.msg)
    return not (text.startswith("Stop signal received") or text.startswith("Experiment has been interrupted"))


def init_ray(*meanwhile: Callable[[], None]) -> None:
    """Start (or join, where RAY_ADDRESS says so) Ray with little noise; `meanwhile` run on a thread
    while it starts (ray.init mostly waits on the processes it starts)."""
    if ray.is_initialized():
        for fn in meanwhile:
            fn()
        return

    def warm_up() -> None:
        _warm_imports()
        for fn in meanwhile:
            fn()

    warm = threading.Thread(target=warm_up, daemon=True)
    warm.start()
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # rlsweep prints its own progress line; Tune's tables would bury it.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune's CSV and TensorBoard loggers cost time every iteration; result.json (which Tune itself
    # reads back) is kept by passing its callback explicitly.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # Tune snapshots its state (which trials run, each one's latest checkpoint) at most every 10 s by
    # default, while it deletes checkpoints beyond sweep.keep_checkpoints at once; `retention.py` keeps
    # a deleted checkpoint until a later snapshot is signed, so a snapshot every second keeps those
    # extra links short-lived (a snapshot of a 16-trial sweep is a few ms).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    # Checkpoints every few iterations with num_to_keep make Tune snapshot often; that is intended.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # on Ctrl-C Tune logs its own recipe (`Tuner.restore(...)`) over rlsweep's one line with the command
    # that resumes; its other messages are kept
    if not verbosity.verbose():
        logging.getLogger("ray.tune.tune").addFilter(_no_tune_interrupt_recipe)
        # a trial stopped before its first result has no result file for Tune's summary to read: rlsweep
        # says what happened to it; the warning with the whole config is for -v
        logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    # Without --address / RAY_ADDRESS rlsweep starts a Ray of its own: ray.init() alone would join the
    # latest cluster started on this machine (`ray start`, /tmp/ray/ray_current_cluster) unasked, and
    # every check here would take that cluster for the local Ray.
    address = None if os.environ.get("RAY_ADDRESS") else "local"
    with _secrets_kept_from_ray():
        ray.init(address=address, include_dashboard=False, logging_level=verbosity.level(), log_to_driver=True,
                 configure_logging=True)
    interrupt_on_termination()
    warm.join()


class TrialStopper(tune.Stopper):
    """Stops a trial at the first of: evaluation mean >= target, training return >= its target,
    env-step budget, training time."""

    def __init__(self, stop: StopConfig):
        self.stop = stop

    def reason(self, result: dict[str, Any]) -> str | None:
        s = self.stop
        ev = result.get(M.EVAL_RETURN_MEAN, math.nan)
        if s.target_return is not None and ev == ev and ev >= s.target_return:
            return f"reached target return {s.target_return:g}"
        tr = result.get(M.EPISODE_RETURN_MEAN, math.nan)
        if s.episode_return is not None and tr == tr and tr >= s.episode_return:
            return f"reached training episode return {s.episode_return:g}"
        if s.env_steps is not None and result.get(M.ENV_STEPS, 0) >= s.env_steps:
            return f"reached {s.env_steps} env steps"
        if s.time_s is not None and result.get(M.TIME_TOTAL_S, 0.0) >= s.time_s:
            return f"reached {s.time_s:g} s of training"
        return None

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        # a trial that met a NaN is not stopped (its end-of-run checkpoint would hold NaN): its next
        # step fails it
        return not result.get(M.NON_FINITE) and self.reason(result) is not None

    def stop_all(self) -> bool:
        return False


def _pending_word() -> str:
    return "waiting for resources" if _short_of_resources else "starting"


class ProgressLine(tune.Callback):
    """A live line on stderr, rewritten in place on a terminal and printed every few seconds otherwise.

    One trial (`rlsweep train`): its iteration, steps, returns and speed. A sweep: trials running and
    done, and the best metric so far.
    """

    def __init__(self, sweep_trials: int | None = None, metric: str = M.EVAL_RETURN_MEAN, mode: str = "max",
                 every_s: float = 5.0, searched: list[str] | None = None,
                 stop_reason: Callable[[dict[str, Any]], str | None] | None = None):
        self.sweep_trials, self.metric, self.mode = sweep_trials, metric, mode
        self.searched, self.stop_reason = list(searched or []), stop_reason
        self.every_s = every_s
        self._best: float | None = None  # the best value any trial has reported (it never goes back)
        self._ended: set[str] = set()  # trials that completed or failed
        self._last = 0.0
        self._start = time.monotonic()

    @staticmethod
    def trial_line(trial_id: str, r: dict[str, Any]) -> str:
        return (
            f"[{trial_id}] iter {r.get(M.TRAINING_ITERATION, 0):>4} | {r.get(M.ENV_STEPS, 0):>9,} steps | "
            f"return {r.get(M.EPISODE_RETURN_MEAN, math.nan):8.2f} | eval {r.get(M.EVAL_RETURN_MEAN, math.nan):8.2f} | "
            f"{r.get(M.ENV_STEPS_PER_S, 0):>8,.0f} steps/s | {r.get(M.TIME_TOTAL_S, 0):6.1f} s"
        )

    def sweep_line(self, trials: list[Any]) -> str:
        # Tune sets a trial's status after the callbacks have heard it ended
        done = len({t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")} | self._ended)
        running = sum(t.status == "RUNNING" and t.trial_id not in self._ended for t in trials)
        pending = sum(t.status == "PENDING" for t in trials)
        waiting = f", {pending} {_pending_word()}" if pending else ""
        best = "-" if self._best is None else M.text(self._best)
        return (f"trials {done}/{self.sweep_trials} done, {running} running{waiting} | best {self.metric} so far "
                f"({self.mode}) {best} | "
                f"{time.monotonic() - self._start:6.1f} s")

    def setup(self, **info) -> None:  # also on resume: time from this process's start of the run
        self._start = time.monotonic()
        self._best = None
        self._last = 0.0

    def _show(self, text: str, force: bool = False) -> None:
        if sys.stderr.isatty():
            self._last = time.monotonic()
            print("\r" + text, end="", file=sys.stderr, flush=True)
        elif force or time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            print(text, file=sys.stderr, flush=True)

    def on_step_end(self, iteration, trials, **info) -> None:
        """While no trial reports (all waiting for a cluster's resources, say), the line still updates."""
        if time.monotonic() - self._last < self.every_s:
            return
        if self.sweep_trials:
            self._show(self.sweep_line(trials), force=True)
        elif trials and all(t.status == "PENDING" for t in trials):
            self._show(f"[{trials[0].trial_id}] {_pending_word()} | {time.monotonic() - self._start:6.1f} s", force=True)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        v = result.get(self.metric)
        if isinstance(v, (int, float)) and math.isfinite(v) and (self._best is None or better(v, self._best, self.mode)):
            self._best = float(v)
        self._show(self.sweep_line(trials) if self.sweep_trials else self.trial_line(trial.trial_id, result))

    def _say(self, text: str) -> None:
        """A line of its own (on a terminal, over the live line, which the next update redraws)."""
        print(("\r\x1b[K" if sys.stderr.isatty() else "") + text, file=sys.stderr, flush=True)

    def finished_line(self, trial: Any, error: str | None = None) -> str:
        """One line per finished trial: its number and searched values, the metric, env steps, why it stopped."""
        r = trial.last_result or {}
        name = trial_run_name(trial_number(getattr(trial, "experiment_tag", None), trial.trial_id), trial.config,
                              self.searched)
        why = f"failed: {error}" if error is not None else \
            (self.stop_reason(r) if self.stop_reason else None) or "stopped before its stop criteria"
        return (f"trial {name} | {self.metric} {M.text(r.get(self.metric, math.nan))} | "
                f"{r.get(M.ENV_STEPS, 0):,} env steps | {why}")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._ended.add(trial.trial_id)
        if self.sweep_trials:
            self._say(self.finished_line(trial))
            self._show(self.sweep_line(trials), force=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._ended.add(trial.trial_id)
        if self.sweep_trials:
            self._say(self.finished_line(trial, trial_error_line(trial)[:200]))

    def on_experiment_end(self, trials, **info) -> None:
        if sys.stderr.isatty():
            print(file=sys.stderr)


class SignTuneState(tune.Callback):
    """Signs a sweep's Tune state (`integrity.Signer`) whenever Tune may have written it: after each
    step of Tune's loop (Tune snapshots its state just before), after a trial error, and at the end;
    keeps each checkpoint recoverable until a signed state no longer names it (`retention.Retainer`)."""

    def __init__(self, directory: str | Path):
        self.signer = Signer(directory)
        self.retainer = Retainer(directory)

    def __setstate__(self, state: dict) -> None:  # a sweep started before checkpoints were kept has none
        self.__dict__.update(state)
        if "retainer" not in state:
            self.retainer = Retainer(self.signer.directory)

    def _find_staging(self) -> None:
        """Tune's driver staging folder for this sweep (`<Ray session>/artifacts/<time>/<name>/
        driver_artifacts`, made at its first save): signing there keeps up with Tune's writes (see
        `integrity.Signer`). Fenced by tests/test_sweep.py's SIGKILL test."""
        if self.signer.staging is not None:
            return
        from ray.train.constants import _get_ray_train_session_dir

        found = sorted(Path(_get_ray_train_session_dir()).glob(f"*/{self.signer.directory.name}/driver_artifacts"),
                       key=lambda p: p.stat().st_mtime)
        if found:
            self.signer.staging = found[-1]

    def setup(self, **info: Any) -> None:
        self.signer.sign()
        self.retainer.keep_all()

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        self.retainer.keep(checkpoint.path)  # before Tune registers it, and deletes older ones

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._find_staging()
        self.signer.sign(trials=False)
        self.retainer.prune(self.signer.state_signed_at)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.signer.sign()  # its error.pkl

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.signer.sign()  # Tune's final snapshot, taken just before
        self.retainer.drop()


def trainable_for(restore_from: str | None = None) -> Any:
    """PPOTrainable with its resources computed from each trial's own config."""
    trainable = PPOTrainable
    if restore_from is not None:
        trainable = tune.with_parameters(PPOTrainable, restore_from=restore_from)
    return tune.with_resources(trainable, lambda config: resource_request(ExperimentConfig.model_validate(config)))


def trial_dirname(trial: Any) -> str:
    """Short trial folders (Tune's default embeds the whole config in the name)."""
    return f"trial_{trial.trial_id}"


@dataclass
class TrainOutcome:
    run_id: str | None
    metrics: dict[str, Any]
    checkpoint: str | None
    stop_reason: str | None
    error: str | None
    trial_dir: str
    interrupted: bool = False
    why_interrupted: str | None = None  # when it was not a signal (the tracking store went away)
    started: bool = True  # False: cut short before the trial started (waiting for resources, say)


def run_train(cfg: ExperimentConfig, restore_from: str | None = None, tags: dict[str, str] | None = None) -> TrainOutcome:
    """One trial of `cfg` through a Tuner; returns its last metrics and checkpoint."""
    from rlsweep.tracking.callback import MlflowCallback
    from rlsweep.tracking.store import Store

    storage = Path(cfg.results_dir).resolve()
    name = f"train-{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    stopper = TrialStopper(cfg.stop)
    tracker = MlflowCallback(Store.of(cfg), str(storage / name), cfg, stopper.reason, tags=tags)
    init_ray(tracker.open)
    check_cluster(cfg)
    tuner = tune.Tuner(
        trainable_for(restore_from),
        param_space=cfg.model_dump(mode="json"),
        tune_config=tune.TuneConfig(num_samples=1, trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(storage),
            stop=stopper,
            checkpoint_config=tune.CheckpointConfig(
                checkpoint_frequency=cfg.checkpoint_frequency, checkpoint_at_end=True
            ),
            callbacks=[JsonLoggerCallback(), tracker, ProgressLine()],
            failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
            verbose=verbosity.tune_verbosity(),
        ),
    )
    result = tuner.fit()[0]
    metrics = dict(result.metrics or {})
    return TrainOutcome(
        run_id=next(iter(tracker.runs.values()), None),
        metrics=metrics,
        checkpoint=result.checkpoint.path if result.checkpoint else None,
        stop_reason=stopper.reason(metrics),
        error=None if result.error is None else error_line(str(result.error)) or type(result.error).__name__,
        trial_dir=str(result.path),
        interrupted=tracker.interrupted,
        why_interrupted=None if tracker.tracking_lost is None else str(tracker.tracking_lost),
        started=tracker.started,
    )
