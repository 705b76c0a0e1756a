"""The MLflow side, in-process: store resolution, the Tracker, and the Tune callback driven by
stand-ins for Tune's trial objects against a real SQLite MLflow store (no Ray cluster needed)."""

import json
import os
import pickle
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from rlsweep import metrics as M
from rlsweep.config import ConfigError, TrackingConfig, flatten, validate
from rlsweep.tracking.callback import MlflowCallback
from rlsweep.tracking.parents import SingleRun, SweepParent
from rlsweep.tracking.store import (
    Store,
    check_store,
    experiment_name,
    local_artifact_root,
    redact,
    resolve_uri,
)
from rlsweep.tracking.writer import TrackingUnavailable
from rlsweep.tuning.stopper import TrialStopper
from tests.conftest import small_config


@dataclass
class Checkpoint:
    path: str


@dataclass
class Trial:
    """What the callback reads of a `ray.tune.experiment.Trial`."""

    trial_id: str
    config: dict[str, Any]
    status: str = "RUNNING"
    last_result: dict[str, Any] = field(default_factory=dict)
    checkpoint: Checkpoint | None = None
    error: str | None = None
    experiment_tag: str = ""

    def get_error(self):
        return RuntimeError(self.error) if self.error else None


# -- where the store is ------------------------------------------------------------------------------


def test_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    local = TrackingConfig(local_dir=str(tmp_path))
    assert resolve_uri(local) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert local_artifact_root(resolve_uri(local), local) == (tmp_path / "mlartifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_uri(local) == "http://127.0.0.1:5000"
    assert local_artifact_root("http://127.0.0.1:5000", local) is None
    assert resolve_uri(TrackingConfig(uri="sqlite:////x/y.db")) == "sqlite:////x/y.db"


def test_experiment_name_and_store():
    cfg = validate(small_config())
    assert experiment_name(cfg) == "test"
    cfg = validate(small_config(tracking={"experiment": "team-a", "uri": "sqlite:////tmp/z.db"}))
    assert experiment_name(cfg) == "team-a"
    assert Store.of(cfg) == Store("sqlite:////tmp/z.db", "team-a", (Path(".").resolve() / "mlartifacts").as_uri())


@pytest.mark.parametrize("setup, uri, fragment", [
    (None, "sqlite:///{tmp}/missing/mlflow.db", "does not exist"),
    (lambda t: (t / "x.db").write_text("not sqlite"), "sqlite:///{tmp}/x.db", "is not an SQLite database"),
    (None, "http://127.0.0.1:9", "cannot be reached"),
])
def test_check_store_says_why(tmp_path, setup, uri, fragment):
    if setup:
        setup(tmp_path)
    with pytest.raises(ConfigError, match=fragment):
        check_store(uri.format(tmp=tmp_path))


def test_check_store_accepts_a_new_sqlite_file(tmp_path):
    check_store(f"sqlite:///{tmp_path / 'new.db'}")
    assert not (tmp_path / "new.db").exists()  # checking creates nothing


# -- the callback -------------------------------------------------------------------------------------


@pytest.fixture
def store(mlflow_store):
    uri, artifacts = mlflow_store
    return Store(uri, f"exp-{uuid.uuid4().hex[:8]}", artifacts)


def runs(store):
    client = MlflowClient(store.uri)
    exp = client.get_experiment_by_name(store.experiment)
    return client, client.search_runs([exp.experiment_id]) if exp else []


def result(step, ret):
    return {M.ENV_STEPS: step, M.EVAL_RETURN_MEAN: ret, M.EPISODE_RETURN_MEAN: ret,
            M.TRAINING_ITERATION: step // 64, "config": {"not": "a metric"}, "trial_id": "x"}


def callback(store, cfg, run_dir, sweep=None):
    return MlflowCallback(store, run_dir, validate(cfg), TrialStopper(validate(cfg).stop).reason, sweep or SingleRun())


def log_result(run_dir, trial):
    """A line of the trial's result log, as Tune's JSON logger writes it into the sweep directory
    (what `ranking.sweep_rows` reads)."""
    folder = Path(run_dir) / f"trial_{trial.trial_id}"
    folder.mkdir(parents=True, exist_ok=True)
    line = {**trial.last_result, "config": trial.config, "trial_id": trial.trial_id,
            "experiment_tag": trial.experiment_tag}
    with open(folder / "result.json", "a") as f:
        f.write(json.dumps(line) + "\n")


def play(cb, trial, steps, tmp_path, trials=None, attempt=0):
    """Tune's hook sequence for one trial: start, then results with a checkpoint after each."""
    trials = trials or [trial]
    cb.on_trial_start(0, trials, trial)
    for step, ret in steps:
        trial.last_result = result(step, ret)
        log_result(cb.run_dir, trial)
        cb.on_trial_result(0, trials, trial, trial.last_result)
        ckpt = tmp_path / f"{trial.trial_id}-{attempt}-{step}"
        ckpt.mkdir()
        (ckpt / "state.json").write_text(str(step))
        cb.on_checkpoint(0, trials, trial, Checkpoint(str(ckpt)))
        trial.checkpoint = Checkpoint(str(ckpt))


def test_train_run_holds_params_history_checkpoints_and_status(store, tmp_path):
    cfg = small_config(tracking={"flush_s": 0})
    cb = callback(store, cfg, str(tmp_path / "train-1"))
    cb.setup()
    trial = Trial("t1", cfg)
    play(cb, trial, [(64, 10.0), (128, 30.0), (192, 20.0)], tmp_path)
    trial.status = "TERMINATED"
    cb.on_trial_complete(0, [trial], trial)
    cb.on_experiment_end([trial])

    client, found = runs(store)
    assert len(found) == 1
    run = found[0]
    assert run.info.status == "FINISHED" and run.data.tags["rlsweep.kind"] == "train"
    assert run.data.tags["rlsweep.status"] == "stopped early"  # stop.env_steps 1000 was not reached
    assert run.data.params == {k: str(v) for k, v in flatten(validate(cfg).model_dump(mode="json")).items()}
    assert [m.step for m in client.get_metric_history(run.info.run_id, M.EVAL_RETURN_MEAN)] == [64, 128, 192]
    assert "config" not in run.data.metrics and "trial_id" not in run.data.metrics
    assert run.data.tags["rlsweep.best_checkpoint_score"] == "30.0"
    best = client.download_artifacts(run.info.run_id, "checkpoints/best/state.json", str(tmp_path / "dl"))
    assert open(best).read() == "128"
    final = client.download_artifacts(run.info.run_id, "checkpoints/final/state.json", str(tmp_path / "dl2"))
    assert open(final).read() == "192"


def sweep_parent(run_dir):
    return SweepParent(name="s1", run_dir=run_dir, metric=M.EVAL_RETURN_MEAN, mode="max",
                       searched=["ppo.lr"], params={"trials": 2})


def test_sweep_nests_trials_under_a_parent_with_a_summary(store, tmp_path):
    cfg = small_config(tracking={"flush_s": 0}, stop={"target_return": 50, "env_steps": 1000})
    run_dir = str(tmp_path / "s1")
    cb = callback(store, cfg, run_dir, sweep_parent(run_dir))
    cb.setup()
    good = Trial("a_00000", {**cfg, "ppo": {**cfg["ppo"], "lr": 0.01}}, experiment_tag="1_lr=0.01")
    bad = Trial("a_00001", cfg, error="ValueError: loss is nan", experiment_tag="2_lr=0.001")
    both = [good, bad]
    play(cb, good, [(64, 20.0), (128, 60.0)], tmp_path, both)
    good.status = "TERMINATED"
    cb.on_trial_complete(0, both, good)
    play(cb, bad, [(64, 5.0)], tmp_path, both)
    bad.status = "ERROR"
    cb.on_trial_error(0, both, bad)
    cb.on_experiment_end(both)

    client, found = runs(store)
    parent = next(r for r in found if r.data.tags["rlsweep.kind"] == "sweep")
    children = {r.data.tags["rlsweep.trial_id"]: r for r in found if r.data.tags["rlsweep.kind"] == "trial"}
    assert set(children) == {"a_00000", "a_00001"}
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children.values())
    assert children["a_00000"].data.tags["rlsweep.status"] == "finished"
    assert children["a_00000"].data.tags["rlsweep.reason"] == "reached target return 50"
    assert children["a_00001"].info.status == "FAILED"
    assert children["a_00001"].data.tags["rlsweep.reason"] == "ValueError: loss is nan"
    assert children["a_00000"].info.run_name == "001 lr=0.01" and children["a_00001"].info.run_name.startswith("002 lr=")
    assert children["a_00000"].data.tags["rlsweep.searched"] == "ppo.lr=0.01"
    # the parent's row reads as the answer: the sweep's params, then the best trial's searched values and metric
    assert parent.info.status == "FINISHED" and parent.data.params == {"trials": "2", "ppo.lr": "0.01"}
    assert parent.data.metrics[M.EVAL_RETURN_MEAN] == 60.0 and parent.data.metrics[M.ENV_STEPS] == 128
    assert parent.data.tags["rlsweep.best_trial_id"] == "a_00000"
    assert parent.data.tags["rlsweep.best_run_id"] == children["a_00000"].info.run_id
    assert parent.data.metrics[f"best_{M.EVAL_RETURN_MEAN}"] == 60.0
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best_config.yaml", "results.csv", "optimization_history.png", "learning_curves.png"} <= artifacts


def test_a_resumed_sweep_reuses_its_runs_and_logs_no_step_twice(store, tmp_path):
    cfg = small_config(tracking={"flush_s": 0})
    run_dir = str(tmp_path / "s2")
    first = callback(store, cfg, run_dir, sweep_parent(run_dir))
    first.setup()
    trial = Trial("b_00000", cfg)
    play(first, trial, [(64, 1.0), (128, 2.0), (192, 3.0)], tmp_path)
    first.on_experiment_end([trial])  # interrupted: the trial is still RUNNING

    client, found = runs(store)
    assert {r.data.tags["rlsweep.status"] for r in found} == {"interrupted"}
    assert {r.info.status for r in found} == {"KILLED"}

    # `rlsweep resume`: Tune unpickles the callback and replays the trial from its checkpoint at 128
    second = pickle.loads(pickle.dumps(first))
    assert second.runs == {} and second.parent_run_id is None
    second.setup()
    trial.status = "RUNNING"
    play(second, trial, [(192, 3.0), (256, 4.0)], tmp_path, attempt=1)
    trial.status = "TERMINATED"
    second.on_trial_complete(0, [trial], trial)
    second.on_experiment_end([trial])

    client, found = runs(store)
    assert len(found) == 2  # one parent, one child: nothing duplicated
    child = next(r for r in found if r.data.tags["rlsweep.kind"] == "trial")
    assert [m.step for m in client.get_metric_history(child.info.run_id, M.ENV_STEPS)] == [64, 128, 192, 256]
    assert {r.info.status for r in found} == {"FINISHED"}


def test_a_restore_note_becomes_a_tag(store, tmp_path):
    cfg = small_config()
    cb = callback(store, cfg, str(tmp_path / "t"))
    cb.setup()
    trial = Trial("n1", cfg)
    cb.on_trial_start(0, [trial], trial)
    cb.on_trial_result(0, [trial], trial, {**result(64, 1.0), M.RESTORE_NOTE: "episodes start afresh"})
    trial.status = "TERMINATED"
    cb.on_trial_complete(0, [trial], trial)
    cb.on_experiment_end([trial])
    _, found = runs(store)
    assert found[0].data.tags["rlsweep.restore_note"] == "episodes start afresh"
    assert M.RESTORE_NOTE not in found[0].data.metrics


def test_a_store_that_stays_unusable_is_raised_in_the_driver_after_outage_s(tmp_path):
    (tmp_path / "a-file").write_text("")
    store = Store(f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}", "x")  # a path no database can have
    cfg = small_config(tracking={"outage_s": 1})
    cb = callback(store, cfg, str(tmp_path / "t"))
    trial = Trial("f1", cfg)
    cb.on_trial_start(0, [trial], trial)
    with pytest.raises(TrackingUnavailable, match=r"the MLflow store was unreachable for \d+ s \(tracking.outage_s = 1\)"):
        cb._writer.barrier()


def test_a_failed_write_is_retried_and_no_row_is_lost(store, tmp_path):
    """The first two writes of the metric rows fail (as a store that is down would): the rows stay
    queued and reach MLflow, once each, when the write goes through."""
    cfg = small_config(tracking={"flush_s": 0})
    cb = callback(store, cfg, str(tmp_path / "r"))
    cb.setup()
    trial = Trial("r1", cfg)
    cb.on_trial_start(0, [trial], trial)
    cb._writer.barrier()
    real, failures = cb.tracker.log_rows, []

    def flaky(run_id, rows):
        if len(failures) < 2:
            failures.append(len(rows))
            raise ConnectionError("store down")
        real(run_id, rows)

    cb.tracker.log_rows = flaky
    for step in (64, 128, 192):
        cb.on_trial_result(0, [trial], trial, result(step, 1.0))
    cb._writer.barrier()
    trial.status = "TERMINATED"
    cb.on_trial_complete(0, [trial], trial)
    cb.on_experiment_end([trial])
    client, found = runs(store)
    assert len(failures) == 2 and all(n >= 1 for n in failures)  # two failed writes of queued rows
    assert [m.step for m in client.get_metric_history(found[0].info.run_id, M.ENV_STEPS)] == [64, 128, 192]
    assert found[0].info.status == "FINISHED"


def test_rows_survive_a_driver_killed_while_the_store_was_down(store, tmp_path):
    """Every write fails (the store is down) and the driver dies without a word (no experiment end):
    the rows it had are in the journal on disk; `resume` writes them, then the replayed and new
    iterations, each step once."""
    cfg = small_config(tracking={"flush_s": 0, "checkpoint_wait_s": 0})
    run_dir = str(tmp_path / "j")
    first = callback(store, cfg, run_dir, sweep_parent(run_dir))
    first.setup()
    trial = Trial("j_00000", cfg)
    first.on_trial_start(0, [trial], trial)
    first._writer.barrier()  # the run exists; then the store goes away

    def down(*args):
        raise ConnectionError("store down")

    first.tracker.log_rows = down
    for step in (64, 128, 192):
        first.on_trial_result(0, [trial], trial, result(step, float(step)))
    second = pickle.loads(pickle.dumps(first))  # `rlsweep resume`, a new process; `first` is abandoned
    second.setup()
    play(second, trial, [(192, 192.0), (256, 256.0)], tmp_path)  # Tune replays from the checkpoint at 128
    trial.status = "TERMINATED"
    second.on_trial_complete(0, [trial], trial)
    second.on_experiment_end([trial])
    client, found = runs(store)
    child = next(r for r in found if r.data.tags["rlsweep.kind"] == "trial")
    history = client.get_metric_history(child.info.run_id, M.EVAL_RETURN_MEAN)
    assert sorted((m.step, m.value) for m in history) == [(64, 64.0), (128, 128.0), (192, 192.0), (256, 256.0)]


def test_the_journal_reads_whole_lines_in_chunks_and_keeps_nan(tmp_path):
    import math

    from rlsweep.tracking.journal import Journal

    j = Journal(tmp_path)
    for step in range(5):
        j.append("t", (step, 1000 + step, {"a": float(step), "b": math.nan if step == 4 else 1.0}))
    with open(j.path("t"), "ab") as f:
        f.write(b'[5,1005,{"a":')  # a line being written when read
    rows, end = j.read("t", max_metrics=4)
    assert [r[0] for r in rows] == [0, 1]
    j.advance("t", end)
    rows, end = j.read("t")
    assert [r[0] for r in rows] == [2, 3, 4] and math.isnan(rows[-1][2]["b"])
    j.advance("t", end)
    assert j.read("t") == ([], end) and j.path("t").stat().st_size > end  # the partial line waits
    j.close()
    assert Journal(tmp_path).read("t", max_metrics=1)[0][0][0] == 0  # a new process starts from the top


def test_passwords_never_reach_a_message():
    assert redact("https://ann:s3cret@mlflow.example:5000/x") == "https://ann:***@mlflow.example:5000/x"
    assert redact("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    with pytest.raises(ConfigError) as e:
        check_store("http://ann:s3cret@127.0.0.1:9")
    assert "s3cret" not in str(e.value) and "ann:***@127.0.0.1:9" in str(e.value)
    assert "cannot be reached" in str(e.value)  # the host was parsed past the credentials


def test_credentials_move_from_the_uri_into_mlflows_variables(monkeypatch):
    from rlsweep.tracking.store import take_credentials

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    assert take_credentials("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert take_credentials("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db" and take_credentials(None) is None
    assert "MLFLOW_TRACKING_USERNAME" not in os.environ
    assert take_credentials("https://ann:p%40ss@mlflow.example:5000/x") == "https://mlflow.example:5000/x"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "ann" and os.environ["MLFLOW_TRACKING_PASSWORD"] == "p@ss"


def test_check_store_sends_basic_auth_from_the_uri():
    """A real HTTP server on loopback that, like `mlflow server --app-name basic-auth`, wants credentials."""
    import base64
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    seen = []

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization")))
            ok = self.headers.get("Authorization") == "Basic " + base64.b64encode(b"ann:s3cret").decode()
            self.send_response(200 if ok else 401)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        check_store(f"http://ann:s3cret@127.0.0.1:{port}")
        with pytest.raises(ConfigError, match=r"ann:\*\*\*@127\.0\.0\.1"):
            check_store(f"http://ann:wrong@127.0.0.1:{port}")
        with pytest.MonkeyPatch.context() as mp:  # or from MLflow's variables
            mp.setenv("MLFLOW_TRACKING_USERNAME", "ann")
            mp.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
            check_store(f"http://127.0.0.1:{port}")
            mp.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
            with pytest.raises(ConfigError, match="cannot be reached"):
                check_store(f"http://127.0.0.1:{port}")
    finally:
        server.shutdown()
    assert seen[0][0] == "/health"


@pytest.mark.slow
def test_processes_opening_a_fresh_sqlite_store_at_once_do_not_race(tmp_path):
    """Four processes create the same brand-new store (and experiment) at the same moment, as two
    sweeps started together do: every one gets it."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = ("import sys, time; from rlsweep.tracking.store import Store\n"
            "time.sleep(max(0, float(sys.argv[2]) - time.time()))\n"
            "print(Store(sys.argv[1], 'together').tracker().experiment_id)")
    import time

    start = time.time() + 4  # after every interpreter has imported MLflow
    procs = [subprocess.Popen([sys.executable, "-c", code, uri, str(start)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "platform")})
             for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-1500:] for _, e in outs]
    assert len({o.strip() for o, _ in outs}) == 1


def test_a_checkpoint_upload_ends_with_its_state_file(store, tmp_path):
    """state.json (holding learner.pt's checksum) is the last file of a replaced checkpoint to land."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for name in ("state.json", "learner.pt", "zz_extra.bin"):
        (ckpt / name).write_text(name)
    tracker = store.tracker()
    run_id = tracker.start("c", {})
    order, real = [], tracker._client.log_artifact
    tracker._client.log_artifact = lambda run, path, folder=None: (order.append(Path(path).name), real(run, path, folder))
    tracker.log_checkpoint(run_id, ckpt, "checkpoints/best")
    assert order[-1] == "state.json" and sorted(order) == ["learner.pt", "state.json", "zz_extra.bin"]
    got = tracker._client.download_artifacts(run_id, "checkpoints/best/state.json", str(tmp_path / "dl"))
    assert open(got).read() == "state.json"


def test_trial_run_names_carry_the_number_and_the_searched_values():
    from rlsweep.ranking import trial_number
    from rlsweep.tracking.runs import trial_run_name

    cfg = validate(small_config(ppo={"lr": 0.000312345, "gamma": 0.98765, "train_batch_size": 128}))
    config = cfg.model_dump(mode="json")
    assert trial_number("3_lr=0.1,gamma=0.9", "ab12c") == "003" and trial_number("", "ab12c") == "ab12c"
    assert trial_run_name("003", config, ["ppo.lr", "ppo.gamma", "ppo.train_batch_size"]) == \
        "003 lr=0.000312 gamma=0.988 batch=128"
    assert trial_run_name("011", config, ["policy.hidden_sizes"]) == "011 hidden=16x16"
    assert trial_run_name("t1", config, []) == "t1"
