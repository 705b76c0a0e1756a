"""The one seam between rlsweep and the private parts of Ray, Ray Tune, Optuna and MLflow.

rlsweep needs a few things those libraries do not offer publicly: a warm-up of Tune's callback
imports, keeping secrets out of Tune's trial actors, the autoscaler's node groups and the head
node's resource, Tune's driver staging folder and file layout, an actor's readiness and a call into
it, two of Tune's log messages, Tune's retry rule, the parts of Tune's `OptunaSearch` a resumable
searcher must reach, several user attributes of an Optuna trial in one commit, and the database
engine under MLflow's client. Each is one named function (or the one adapter
class) here, and nothing else in rlsweep imports a `_private`, `_internal` or `_name` of a dependency.
`tests/test_compat.py` holds one canary per function: it fails, naming the dependency and the version
installed, when an upgrade moves what the function relies on.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger("rlsweep")

# -- Ray ----------------------------------------------------------------------------------------------


def warm_tune_callback_imports() -> None:
    """Import what Tune imports to count callbacks for its usage stats (its MLflow, W&B and Comet
    integrations: seconds) now, e.g. on a thread while Ray starts, instead of when the Tuner starts."""
    import ray.air._internal.usage as usage

    usage._count_callbacks([])


def keep_env_out_of_trials(names: Iterable[str]) -> None:
    """Stop Tune from copying these environment variables into every trial actor's runtime env (which
    Ray writes to a log file)."""
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE.difference_update(names)


def autoscaler_config() -> Any | None:
    """The joined cluster's autoscaler configuration as Ray's GCS holds it (`node_group_configs`, each
    with `resources` and `max_count`; `max_resources`), or None where there is none or it cannot be
    read."""
    try:
        from ray._private.state import state

        return state.get_cluster_config()
    except Exception:  # noqa: BLE001 - an internal API: where it is missing or fails, no ceiling is known
        return None


def actor_ready(actor: Any) -> Any:
    """A ref that resolves once `actor` has started (its constructor has run)."""
    return actor.__ray_ready__.remote()


def actor_call(actor: Any, fn: Callable[..., Any], *args: Any) -> Any:
    """A ref to `fn(actor's instance, *args)` run in the actor's process (Ray's `__ray_call__`, a
    developer API)."""
    return actor.__ray_call__.remote(fn, *args)


# the resource Ray gives the head node alone (`ray._common.constants.HEAD_NODE_RESOURCE_NAME`)
HEAD_NODE_RESOURCE = "node:__internal_head__"


# Tune's on-disk layout of a trial folder (what `rlsweep best` and the ranked rows read)
TRIAL_RESULT_FILE = "result.json"  # JsonLoggerCallback: one JSON line per reported result
TRIAL_ERROR_PICKLE = "error.pkl"  # Trial.handle_error: the trial's latest error, pickled (error.txt: its text)
CHECKPOINT_PREFIX = "checkpoint_"  # checkpoint_000012: the trial's checkpoints, by index


def trial_result_file(trial_dir: Path) -> Path:
    """The file in which Tune's JSON logger keeps a trial's results, one JSON line each."""
    return trial_dir / TRIAL_RESULT_FILE


def latest_checkpoint(trial_dir: Path, usable: Callable[[Path], bool] = Path.is_dir) -> Path | None:
    """The trial's newest checkpoint folder that is `usable` (Tune always keeps the newest), or None."""
    found = sorted((p for p in trial_dir.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir()
                    and p.name.removeprefix(CHECKPOINT_PREFIX).isdigit()),
                   key=lambda p: int(p.name.removeprefix(CHECKPOINT_PREFIX)), reverse=True)
    return next((p for p in found if usable(p)), None)


TUNE_RUN_LOGGER = "ray.tune.tune"
TUNE_ANALYSIS_LOGGER = "ray.tune.analysis.experiment_analysis"


# where Tune logs the traceback of a failed save: a trial's checkpoint, its experiment state
TUNE_SAVE_LOGGERS = ("ray.tune.execution.tune_controller", "ray.tune.execution.experiment_state")


def _tune_interrupt_recipe(record: logging.LogRecord) -> bool:
    text = str(record.msg)
    return not (text.startswith("Stop signal received") or text.startswith("Experiment has been interrupted")
                or text.startswith("Trials did not complete"))



def quiet_tune_logs() -> None:
    """Drop what Tune logs over rlsweep's own lines: its resume recipe (`Tuner.restore(...)`) on
    Ctrl-C, its list of trials that did not complete (rlsweep says how each ended), and the warning
    with a whole config for a trial stopped before its first result. (The tracebacks of saves that a full
    disk failed: `tuning.full_disk.quiet_tracebacks`.)"""
    logging.getLogger(TUNE_RUN_LOGGER).addFilter(_tune_interrupt_recipe)
    logging.getLogger(TUNE_ANALYSIS_LOGGER).setLevel(logging.ERROR)


_IGNORED = "Exception ignored in: "  # Python's line for an exception in __del__ or a weakref callback
_TEARDOWN_MARK = "sigterm_handler"  # ... raised there by Ray's SIGTERM handler (worker.py)
_TEARDOWN_END = "SystemExit"  # ... as its last line
_HOLD_S = 2.0  # how long a block's first lines wait for the rest (Ray sends a worker's lines in batches)


def quiet_worker_teardown() -> None:
    """Ray prints each worker's stderr at the driver. A worker that Ray stops (SIGTERM, at a trial's end
    or at shutdown) while Python is running a finaliser (an actor handle's `__del__`, a weak set's
    callback) prints `Exception ignored in: <function ...>` and a traceback through Ray's
    `sigterm_handler` ending in `SystemExit: 1`: Ray's own teardown, nothing the user can act on. Those
    blocks are dropped from what Ray prints (its log handler, `ray_print_logs`, wrapped); every other
    line a worker says, other exceptions in finalisers included, still reaches the terminal."""
    import time

    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    original = dict(dispatcher.handlers).get("ray_print_logs")
    if original is None or getattr(original, "rlsweep_quiet", False):
        return
    held: dict[Any, tuple[float, dict[str, Any], list[str]]] = {}  # pid -> a block begun, not yet ended

    def flush_stale(now: float) -> None:
        for pid, (since, data, lines) in list(held.items()):
            if now - since > _HOLD_S:  # never ended: not the teardown block; said as it was
                del held[pid]
                original({**data, "lines": lines})

    def quiet(data: dict[str, Any]) -> None:
        now = time.monotonic()
        flush_stale(now)
        pid = data.get("pid")
        kept: list[str] = []
        block = held.pop(pid, (now, data, []))[2] if pid in held else None
        for line in data.get("lines", []):
            if block is None and line.startswith(_IGNORED):
                block = [line]
            elif block is not None:
                block.append(line)
                if line and not line[0].isspace() and not line.startswith("Traceback"):  # its last line
                    if not (line.startswith(_TEARDOWN_END) and any(_TEARDOWN_MARK in x for x in block)):
                        kept += block
                    block = None
            else:
                kept.append(line)
        if block is not None:
            held[pid] = (now, data, block)
        if kept:
            original({**data, "lines": kept})

    quiet.rlsweep_quiet = True  # type: ignore[attr-defined]
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", quiet)


def stop_retrying(trial: Any) -> None:
    """Tune restarts a failed trial from its last checkpoint up to `FailureConfig.max_failures` times,
    for every error alike; this trial's next failure is final (it diverged: a restart from an exact
    checkpoint would diverge again)."""
    trial.max_failures = 0


def forget_stale_stop(tune_controller: Any, trial: Any) -> None:
    """Drops a STOP that Tune's controller holds for a PAUSED or PENDING trial (ray#57906).

    Tune caches a STOP for a trial whose save is in flight and runs it when the trial's next save
    resolves. Synchronous PBT that copies a strong trial into a weak one still saving its pause
    (`_exploit` -> `pause_trial(should_checkpoint=False)` -> `_schedule_trial_stop`) leaves that STOP
    behind, with the save dropped: the copy trains on and is TERMINATED at its first checkpoint, short
    of its budget. A trial that waits to run has no save in flight, so such a STOP is stale. The
    scheduler gets a wrapper around the controller (`_tune_controller` inside)."""
    controller = getattr(tune_controller, "_tune_controller", tune_controller)
    decisions = getattr(controller, "_cached_trial_decisions", None)
    if decisions is not None and trial.status in ("PAUSED", "PENDING") and decisions.get(trial.trial_id) == "STOP":
        del decisions[trial.trial_id]


# -- Optuna inside Tune -------------------------------------------------------------------------------


def optuna_search_base() -> type:
    """Tune's `OptunaSearch` with its private parts behind public names, for `searcher.py` to build on:
    `trials` (Tune trial id -> the Optuna trial it asked), `study`, and `config_from(func, ot_trial)`,
    which turns a define-by-run function's suggestion into the trial's config."""
    from ray.tune.search.optuna import OptunaSearch

    class OptunaSearchBase(OptunaSearch):
        @property
        def trials(self) -> dict[str, Any]:
            return self._ot_trials

        @property
        def study(self) -> Any:
            return self._ot_study

        def config_from(self, func: Callable[[Any], dict | None], ot_trial: Any) -> dict | None:
            return OptunaSearch._suggest_from_define_by_run_func(self, func, ot_trial)

        def _suggest_from_define_by_run_func(self, func: Any, ot_trial: Any) -> dict | None:
            return self.config_from(func, ot_trial)

        # Pickled (into Tune's tuner.pkl and searcher state) by the study's name and storage URL rather
        # than as Optuna objects, which hold the storage's connection: `relocate_storage` maps the URL
        # on the way back (a sweep's own study file, where the sweep's folder is elsewhere now).
        relocate_storage: Callable[[str], str] = staticmethod(lambda url: url)

        def __getstate__(self) -> dict[str, Any]:
            state = self.__dict__.copy()
            study, storage = state.pop("_ot_study", None), state.pop("_storage", None)
            trials = state.pop("_ot_trials", {})
            if study is None or getattr(storage, "url", None) is None:
                return {**state, "_ot_study": study, "_storage": storage, "_ot_trials": trials}
            state["_rlsweep_study"] = (study.study_name, storage.url,
                                       {tid: optuna_trial_id(t) for tid, t in trials.items()})
            return state

        def __setstate__(self, state: dict[str, Any]) -> None:
            import optuna

            state = dict(state)
            portable = state.pop("_rlsweep_study", None)
            self.__dict__.update(state)
            if portable is not None:
                name, url, trials = portable
                self._storage = optuna.storages.RDBStorage(type(self).relocate_storage(url))
                self._ot_study = optuna.load_study(study_name=name, storage=self._storage, sampler=self._sampler,
                                                   pruner=optuna.pruners.NopPruner())
                self._ot_trials = {tid: optuna.trial.Trial(self._ot_study, i) for tid, i in trials.items()}

        def save(self, checkpoint_path: str) -> None:
            import pickle

            with open(checkpoint_path, "wb") as f:
                pickle.dump(self.__getstate__(), f)

        def restore(self, checkpoint_path: str) -> None:
            import pickle

            with open(checkpoint_path, "rb") as f:
                self.__setstate__(pickle.load(f))

    return OptunaSearchBase


def optuna_set_user_attrs(storage: Any, trial_id: int, attrs: dict[str, Any]) -> None:
    """Sets several user attributes of an Optuna trial in one transaction of its RDB storage (Optuna's
    `set_trial_user_attr` commits each one: on SQLite every commit syncs the disk)."""
    from optuna.storages._rdb.models import TrialUserAttributeModel
    from optuna.storages._rdb.storage import _create_scoped_session

    with _create_scoped_session(storage.scoped_session, True) as session:
        for key, value in attrs.items():
            storage._set_trial_attr_without_commit(session, TrialUserAttributeModel, trial_id, key, value)


def optuna_trial_id(trial: Any) -> int:
    """The storage's id of an Optuna trial (`Trial` or `FrozenTrial`): what reopens it as a `Trial`."""
    return trial._trial_id


# -- MLflow -------------------------------------------------------------------------------------------


def sqlite_write_ahead_log(client: Any) -> bool:
    """Puts the SQLite database under an MLflow client in write-ahead-log mode with `synchronous=NORMAL`
    (every connection its engine opens from now on); False where the store is not a SQLite file.

    MLflow's SQLite store commits every call in SQLite's default rollback-journal mode, which syncs the
    disk several times a commit: most of a small `log_batch`'s cost. With the log, a commit is an append
    (synced at the log's checkpoints): a process killed at any point leaves the database whole with
    every commit made; a power cut can lose the last commits, never the database. Readers in other
    processes (the MLflow UI) go on reading while the sweep writes.
    """
    from sqlalchemy import event

    engine = getattr(client._tracking_client.store, "engine", None)
    if engine is None or engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:"):
        return False
    if not getattr(engine, "_rlsweep_wal", False):
        event.listen(engine, "connect", _wal_pragmas)
        engine.dispose()  # (connections opened before the listener reconnect through it)
        engine._rlsweep_wal = True
        _WAL_ENGINES.append(engine)
    return True


_WAL_ENGINES: list[Any] = []


def close_sqlite_stores() -> None:
    """Folds the write-ahead log of every SQLite store `sqlite_write_ahead_log` set up in this process
    into its database file (its connections closed first) and, where no other connection is open,
    turns the file back to SQLite's default journal (the log and its index file go away), so that
    `mlflow.db` alone, copied anywhere, holds every commit; a process that ends in `os._exit` closes
    nothing itself. The next rlsweep command turns the log on again."""
    import sqlite3
    import sys

    registry = sys.modules.get("mlflow.store.model_registry.sqlalchemy_store")  # (its engines are its own)
    others = list(getattr(getattr(registry, "SqlAlchemyStore", None), "_engine_map", {}).values())
    for engine in _WAL_ENGINES:
        try:
            for other in others:
                if other.url.database == engine.url.database:  # (a sweep that registered its winner)
                    other.dispose()
            engine.dispose()
            uri = Path(engine.url.database).resolve().as_uri() + "?mode=rw"  # (never a new, empty file)
            with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5)) as db:
                busy = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                if busy:
                    log.warning("%s: a reader kept part of its write-ahead log (%s-wal) out of the file; "
                                "the next rlsweep command folds it in", engine.url.database, engine.url.database)
                else:
                    db.execute("PRAGMA journal_mode=DELETE")  # (refused while another connection is open)
        except Exception:  # noqa: BLE001, S110 - the log stays beside the file; SQLite reads them together
            pass


def _wal_pragmas(connection: Any, _record: Any) -> None:
    import sqlite3

    cursor = connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")  # (kept in the file: set once, a no-op after)
        cursor.execute("PRAGMA synchronous=NORMAL")  # (per connection)
    except sqlite3.OperationalError:  # another process holds the database: this connection syncs as before
        pass
    finally:
        cursor.close()
