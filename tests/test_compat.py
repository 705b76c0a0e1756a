"""Canaries for `rlsweep.compat`, the one seam to private parts of Ray, Tune and Optuna: each checks
what one of its functions relies on, fast, and fails naming the dependency and its installed version,
so an upgrade that moves an internal is caught here, before a sweep or a resume breaks."""

import inspect
import logging
from importlib.metadata import version

import optuna
import pytest

from rlsweep import compat

RAY = f"ray {version('ray')}"
OPTUNA = f"optuna {version('optuna')}"


def test_warm_tune_callback_imports():
    import ray.air._internal.usage as usage

    assert callable(getattr(usage, "_count_callbacks", None)), \
        f"{RAY}: ray.air._internal.usage._count_callbacks is gone (compat.warm_tune_callback_imports)"
    compat.warm_tune_callback_imports()


def test_keep_env_out_of_trials():
    from ray.tune.execution import class_cache

    assert isinstance(getattr(class_cache, "ENV_VARS_TO_PROPAGATE", None), set), \
        f"{RAY}: ray.tune.execution.class_cache.ENV_VARS_TO_PROPAGATE moved (compat.keep_env_out_of_trials)"
    class_cache.ENV_VARS_TO_PROPAGATE.add("RLSWEEP_CANARY_SECRET")
    compat.keep_env_out_of_trials(["RLSWEEP_CANARY_SECRET"])
    assert "RLSWEEP_CANARY_SECRET" not in class_cache.ENV_VARS_TO_PROPAGATE
    source = inspect.getsource(class_cache)
    assert "ENV_VARS_TO_PROPAGATE" in source.split("def ", 1)[1], \
        f"{RAY}: Tune no longer reads ENV_VARS_TO_PROPAGATE when it builds a trial actor's runtime env"


def test_autoscaler_config():
    from ray._private.state import state

    assert callable(getattr(state, "get_cluster_config", None)), \
        f"{RAY}: ray._private.state.state.get_cluster_config is gone (compat.autoscaler_config)"
    fields = {"node_group_configs", "max_resources"}
    from ray.core.generated import autoscaler_pb2

    have = set(autoscaler_pb2.ClusterConfig.DESCRIPTOR.fields_by_name)
    assert fields <= have, f"{RAY}: ClusterConfig lost {fields - have} (compat.autoscaler_config)"
    group = set(autoscaler_pb2.NodeGroupConfig.DESCRIPTOR.fields_by_name)
    assert {"resources", "max_count"} <= group, f"{RAY}: NodeGroupConfig is now {sorted(group)}"


def test_trial_local_path_is_staging():
    from ray.train._internal import storage
    from ray.tune.experiment import trial

    assert "trial_driver_staging_path" in inspect.getsource(trial.Trial.local_path.fget), \
        f"{RAY}: Trial.local_path is no longer the trial's driver staging folder (signing.SignTuneState._find_staging)"
    source = inspect.getsource(storage.StorageContext.trial_driver_staging_path.fget)
    assert "experiment_driver_staging_path" in source, \
        f"{RAY}: a trial's staging folder is no longer inside the experiment's (signing.SignTuneState._find_staging)"


def test_actor_ready(ray_local):
    @ray_local.remote(num_cpus=0)
    class Probe:
        pass

    actor = Probe.remote()
    try:
        ray_local.get(compat.actor_ready(actor), timeout=60)
    except AttributeError:
        pytest.fail(f"{RAY}: actors no longer have __ray_ready__ (compat.actor_ready)")
    finally:
        ray_local.kill(actor)


def test_actor_call(ray_local):
    @ray_local.remote(num_cpus=0)
    class Probe:
        def __init__(self):
            self.value = 7

    actor = Probe.remote()
    try:
        assert ray_local.get(compat.actor_call(actor, lambda self, add: self.value + add, 1), timeout=60) == 8, \
            f"{RAY}: __ray_call__ no longer runs fn(instance, *args) (compat.actor_call)"
    finally:
        ray_local.kill(actor)


def test_head_node_resource():
    from ray._common.constants import HEAD_NODE_RESOURCE_NAME

    assert HEAD_NODE_RESOURCE_NAME == compat.HEAD_NODE_RESOURCE, \
        f"{RAY}: the head node's resource is now {HEAD_NODE_RESOURCE_NAME!r} (compat.HEAD_NODE_RESOURCE)"


def test_tune_trial_layout(tmp_path):
    from ray.tune.logger import json as tune_json
    from ray.tune.result import EXPR_RESULT_FILE

    assert EXPR_RESULT_FILE == compat.TRIAL_RESULT_FILE, f"{RAY}: Tune's result file is now {EXPR_RESULT_FILE}"
    assert "EXPR_RESULT_FILE" in inspect.getsource(tune_json), f"{RAY}: the JSON logger writes another file"
    from ray.train._internal.storage import StorageContext

    name = StorageContext._make_checkpoint_dir_name(12)
    assert name.startswith(compat.CHECKPOINT_PREFIX) and name.removeprefix(compat.CHECKPOINT_PREFIX).isdigit(), \
        f"{RAY}: checkpoint folders are now named like {name!r} (compat.latest_checkpoint)"
    for i in (2, 10, 9):
        (tmp_path / StorageContext._make_checkpoint_dir_name(i)).mkdir()
    assert compat.latest_checkpoint(tmp_path).name == StorageContext._make_checkpoint_dir_name(10)


def test_quiet_tune_logs():
    from ray.tune import tune as tune_run

    source = inspect.getsource(tune_run)
    for message in ("Stop signal received", "Experiment has been interrupted"):
        assert message in source, f"{RAY}: Tune no longer logs {message!r} on Ctrl-C (compat.quiet_tune_logs)"
    assert logging.getLogger(compat.TUNE_RUN_LOGGER) is tune_run.logger, f"{RAY}: ray.tune.tune logs elsewhere"
    from ray.tune.analysis import experiment_analysis

    assert experiment_analysis.logger.name == compat.TUNE_ANALYSIS_LOGGER, f"{RAY}: Tune's analysis logger moved"


def test_quiet_worker_teardown(ray_local):
    """Ray's handler of worker output is where rlsweep expects it; wrapped, it drops the blocks of
    finalisers that Ray's SIGTERM handler interrupted (whole, across batches) and passes every other
    line on, another finaliser's exception included."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    assert "ray_print_logs" in dict(dispatcher.handlers)  # log_to_driver: Ray's printer is registered
    original = dict(dispatcher.handlers)["ray_print_logs"]
    seen = []
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", lambda data: seen.append(data["lines"]))
    teardown = ["Traceback (most recent call last):", '  File "ray/_private/worker.py", line 1063, in sigterm_handler',
                "    raise_sys_exit_with_custom_error_message(", "", "SystemExit: 1"]
    try:
        compat.quiet_worker_teardown()
        compat.quiet_worker_teardown()  # once only
        dispatcher.emit({"pid": 7, "is_err": True, "lines": [
            "before", "Exception ignored in: <function ActorHandle.__del__ at 0x7f>", *teardown[:2]]})
        dispatcher.emit({"pid": 7, "is_err": True, "lines": [*teardown[2:], "after"]})
        dispatcher.emit({"pid": 9, "is_err": True, "lines": [
            "Exception ignored in: <function WeakSet.__init__.<locals>._remove at 0x7f>", *teardown, "next"]})
        dispatcher.emit({"pid": 8, "is_err": True, "lines": [
            "Exception ignored in: <function Foo.__del__>", "Traceback (most recent call last):", "  File x",
            "ValueError: real", "Traceback (most recent call last):", "KeyError: also real"]})
    finally:
        dispatcher.remove_handler("ray_print_logs")
        dispatcher.add_handler("ray_print_logs", original)
    assert seen == [["before"], ["after"], ["next"],
                    ["Exception ignored in: <function Foo.__del__>", "Traceback (most recent call last):", "  File x",
                     "ValueError: real", "Traceback (most recent call last):", "KeyError: also real"]]


def test_stop_retrying():
    from ray.tune.experiment import Trial

    source = inspect.getsource(Trial.should_recover)
    assert "self.max_failures" in source, f"{RAY}: Trial.should_recover no longer reads max_failures (compat.stop_retrying)"


def test_optuna_search_base():
    from ray.tune.search.optuna import OptunaSearch

    hook = getattr(OptunaSearch, "_suggest_from_define_by_run_func", None)
    assert callable(hook), f"{RAY}: OptunaSearch._suggest_from_define_by_run_func is gone (compat.optuna_search_base)"
    params = list(inspect.signature(hook).parameters)
    assert params == ["self", "func", "ot_trial"], f"{RAY}: OptunaSearch._suggest_from_define_by_run_func is now {params}"
    source = inspect.getsource(OptunaSearch)
    for attr in ("self._ot_trials", "self._ot_study"):
        assert attr in source, f"{RAY}: OptunaSearch no longer keeps {attr} (compat.optuna_search_base)"
    base = compat.optuna_search_base()
    for name in ("trials", "study", "config_from"):
        assert hasattr(base, name)


def test_optuna_trial_id():
    study = optuna.create_study()
    asked = study.ask()
    frozen = study.trials[0]
    assert compat.optuna_trial_id(frozen) == compat.optuna_trial_id(asked), \
        f"{OPTUNA}: Trial and FrozenTrial no longer share _trial_id (compat.optuna_trial_id)"
    again = optuna.trial.Trial(study, compat.optuna_trial_id(frozen))
    assert again.number == asked.number, f"{OPTUNA}: optuna.trial.Trial(study, trial_id) no longer reopens a trial"


def test_sqlite_write_ahead_log(tmp_path):
    import contextlib
    import shutil
    import sqlite3

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    assert compat.sqlite_write_ahead_log(client), f"mlflow {version('mlflow')}: no SQLAlchemy engine under the client"
    client.create_experiment("x")
    client.create_registered_model("m")  # (the model registry's store has an engine of its own)
    with contextlib.closing(sqlite3.connect(tmp_path / "mlflow.db")) as other:  # the mode is the file's
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with client._tracking_client.store.engine.connect() as mine:
        assert mine.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    assert not compat.sqlite_write_ahead_log(MlflowClient("http://127.0.0.1:9"))  # a server: not ours to set
    assert (tmp_path / "mlflow.db-wal").stat().st_size > 0
    compat.close_sqlite_stores()  # the log folded into the file, the file back to SQLite's default journal
    assert not (tmp_path / "mlflow.db-wal").exists() and not (tmp_path / "mlflow.db-shm").exists(), \
        f"mlflow {version('mlflow')}: a connection of its stores outlived close_sqlite_stores"
    (tmp_path / "copy").mkdir()
    shutil.copyfile(tmp_path / "mlflow.db", tmp_path / "copy" / "mlflow.db")  # the file alone, as users copy it
    copy = MlflowClient(f"sqlite:///{tmp_path / 'copy' / 'mlflow.db'}", registry_uri=f"sqlite:///{tmp_path / 'copy' / 'mlflow.db'}")
    assert copy.get_experiment_by_name("x") is not None and copy.get_registered_model("m").name == "m"


def test_optuna_set_user_attrs(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}")
    study = optuna.create_study(storage=storage)
    asked = study.ask()
    compat.optuna_set_user_attrs(storage, compat.optuna_trial_id(asked), {"a": "1", "b": 2})
    again = optuna.load_study(study_name=study.study_name, storage=f"sqlite:///{tmp_path / 'o.db'}")
    assert again.trials[0].user_attrs == {"a": "1", "b": 2}, \
        f"{OPTUNA}: RDBStorage's session helper or _set_trial_attr_without_commit moved (compat.optuna_set_user_attrs)"
