"""The Ray session a command runs in: started (or joined) with little noise and without the driver's
secrets, and checked against what each trial asks for before any trial is queued."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import ray

from rlsweep import compat, timeline, verbosity
from rlsweep.config import ConfigError, ExperimentConfig
from rlsweep.interrupts import interrupt_on_termination
from rlsweep.tuning.storage import check_shared_storage

# Credentials only the driver uses (MLflow's, and the object store's behind it): Ray's processes
# inherit the environment of the process that starts them, and Tune copies the AWS ones into every
# trial actor's runtime env, which Ray writes to a log file under its temp folder.
SECRET_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
              "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
              "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCESS_KEY")
# what the trials need where results are in a bucket (`tuning.bucket`): the Ray rlsweep starts keeps
# them in its processes' environment (which no log records), never in a runtime env
BUCKET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")



@contextlib.contextmanager
def _secrets_kept_from_ray(bucket: bool) -> Iterator[None]:
    """Starts Ray's processes without the driver's credentials (but the bucket's, where results are in
    one: its trials write their checkpoints there), and stops Tune from copying any into trial actors'
    runtime envs."""
    compat.keep_env_out_of_trials(SECRET_ENV)
    saved = {k: os.environ.pop(k) for k in SECRET_ENV if k in os.environ and not (bucket and k in BUCKET_ENV)}
    try:
        yield
    finally:
        os.environ.update(saved)



WAIT_ENV = "RLSWEEP_WAIT_FOR_RESOURCES"  # set by --wait-for-resources



class _Fit:
    """What the last `check_cluster` of this process found: whether some trial does not fit the
    cluster as it is now (the live line then calls pending trials waiting for resources; otherwise
    they are only starting: Tune holds a trial pending while its actors start, also on a local Ray)."""

    short_of_resources = False


def short_of_resources() -> bool:
    """Whether the last `check_cluster` found the joined cluster too small for a trial now."""
    return _Fit.short_of_resources


Sizes = tuple[dict[str, float], list[dict[str, float]]]  # (all nodes together, each node's resources)



def _cluster_now() -> Sizes:
    return ray.cluster_resources(), [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]



def _autoscaling_ceiling(now: Sizes) -> Sizes | None:
    """What the joined cluster may grow to, where its autoscaler's node groups (their node sizes and
    most nodes) are in Ray's GCS; None where they are not (`ray start` nodes; also Ray's own
    autoscaler in Ray 2.60, which does not report them). The head node is counted as it is now and
    beside the groups (a group for it would count it twice: too much, never too little)."""
    config = compat.autoscaler_config()
    groups = [g for g in (config.node_group_configs if config is not None else []) if g.max_count != 0]
    if not groups:
        return None
    heads = [r for r in now[1] if compat.HEAD_NODE_RESOURCE in r]
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

    now = _cluster_now()
    try:
        fits(now, "the cluster now", "of the cluster now")
    except ConfigError as short:
        _Fit.short_of_resources = True
        ceiling = _autoscaling_ceiling(now)
        if not _wait_asked():
            if ceiling is None:
                raise ConfigError(f"{short} (Ray knows of no autoscaler for this cluster; if one adds nodes, pass "
                                  "--wait-for-resources)") from None
            fits(ceiling, "the cluster at its autoscaler's largest", "of the cluster or that its autoscaler adds")
        print(f"rlsweep: {short}; its trials wait until nodes are added (Ctrl-C stops)", file=sys.stderr)
    check_shared_storage(str(storage or cfg.results_dir))



def init_ray(*meanwhile: Callable[[], None], bucket: bool = False) -> None:
    """Start (or join, where RAY_ADDRESS says so) Ray with little noise; `meanwhile` run on a thread
    while it starts (ray.init mostly waits on the processes it starts). `bucket`: results are in a
    bucket, whose credentials a Ray started here passes on to its processes (a joined cluster's nodes
    have their own)."""
    if ray.is_initialized():
        for fn in meanwhile:
            fn()
        return

    def warm_up() -> None:
        compat.warm_tune_callback_imports()
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
        # (and a trial stopped before its first result has no result file for Tune's summary to read:
        # rlsweep says what happened to it; the warning with the whole config is for -v)
        compat.quiet_tune_logs()
    # Without --address / RAY_ADDRESS rlsweep starts a Ray of its own: ray.init() alone would join the
    # latest cluster started on this machine (`ray start`, /tmp/ray/ray_current_cluster) unasked, and
    # every check here would take that cluster for the local Ray.
    address = None if os.environ.get("RAY_ADDRESS") else "local"
    timeline.mark("ray_starting")
    with _secrets_kept_from_ray(bucket):
        ray.init(address=address, include_dashboard=False, logging_level=verbosity.level(), log_to_driver=True,
                 configure_logging=True)
    interrupt_on_termination()
    timeline.mark("ray_started")
    warm.join()
    timeline.mark("warmed_up")
    if not verbosity.verbose():  # (Tune is imported by now: the warm-up did it)
        from rlsweep.tuning.full_disk import quiet_tracebacks

        quiet_tracebacks()
        compat.quiet_worker_teardown()

