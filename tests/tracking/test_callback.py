"""The Tune callback, driven in-process by stand-ins for Tune's trial objects (tests.conftest) against a
real SQLite MLflow store: runs, their history and checkpoints, a sweep's parent and summary, resume,
and a store that fails or stays down."""

import json
import pickle
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from rlsweep import metrics as M
from rlsweep.config import flatten, validate
from rlsweep.tracking.callback import MlflowCallback
from rlsweep.tracking.parents import SingleRun, SweepParent
from rlsweep.tracking.store import Store
from rlsweep.tracking.writer import TrackingUnavailable
from rlsweep.tuning.stopper import TrialStopper
from tests.conftest import StandInCheckpoint, StandInTrial, small_config


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
        cb.on_checkpoint(0, trials, trial, StandInCheckpoint(str(ckpt)))
        trial.checkpoint = StandInCheckpoint(str(ckpt))


def opened(store, tmp_path, tid, tracking):
    """A callback set up with `tracking` settings and trial `tid`'s run open in MLflow."""
    cfg = small_config(tracking=tracking)
    cb = callback(store, cfg, str(tmp_path / tid[0]))
    cb.setup()
    trial = StandInTrial(tid, cfg)
    cb.on_trial_start(0, [trial], trial)
    cb._writer.barrier()
    return cb, trial


def failing_first(times, real, failures):
    """`Tracker.log_rows` whose first `times` calls fail as a store that is down would (each failure's
    row count appended to `failures`), then write through `real`."""
    def log_rows(run_id, rows, tags=None):
        if len(failures) < times:
            failures.append(len(rows))
            raise ConnectionError("store down")
        real(run_id, rows, tags)
    return log_rows


def test_train_run_holds_params_history_checkpoints_and_status(store, tmp_path):
    cfg = small_config(tracking={"flush_s": 0})
    cb = callback(store, cfg, str(tmp_path / "train-1"))
    cb.setup()
    trial = StandInTrial("t1", cfg)
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
    assert [m.step for m in client.get_metric_history(run.info.run_id, M.mlflow_key(M.EVAL_RETURN_MEAN))] == [64, 128, 192]
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
    good = StandInTrial("a_00000", {**cfg, "ppo": {**cfg["ppo"], "lr": 0.01}}, experiment_tag="1_lr=0.01")
    bad = StandInTrial("a_00001", cfg, error="ValueError: loss is nan", experiment_tag="2_lr=0.001")
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
    assert children["a_00000"].info.run_name == "001 lr=0.01 (winner)" and children["a_00001"].info.run_name.startswith("002 lr=")
    assert children["a_00000"].data.tags["rlsweep.searched"] == "ppo.lr=0.01"
    # each trial its own colour in MLflow's charts (by its number)
    assert [children[t].data.tags["mlflow.runColor"] for t in ("a_00000", "a_00001")] == ["#1f77b4", "#ff7f0e"]
    # the parent's row reads as the answer: the sweep's params, then the best trial's searched values; its
    # metrics are best_*, so that a sort by the trials' metric never lists it among them
    assert parent.info.status == "FINISHED" and parent.data.params == {"trials": "2", "ppo.lr": "0.01"}
    assert M.EVAL_RETURN_MEAN not in parent.data.metrics and parent.data.metrics[f"best_{M.ENV_STEPS}"] == 128
    assert parent.data.tags["mlflow.note.content"].startswith("**Winner: trial 001 lr=0.01**, eval_return_mean 60")
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
    trial = StandInTrial("b_00000", cfg)
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
    assert [m.step for m in client.get_metric_history(child.info.run_id, M.mlflow_key(M.ENV_STEPS))] == [64, 128, 192, 256]
    assert {r.info.status for r in found} == {"FINISHED"}


def test_a_restore_note_becomes_a_tag(store, tmp_path):
    cfg = small_config()
    cb = callback(store, cfg, str(tmp_path / "t"))
    cb.setup()
    trial = StandInTrial("n1", cfg)
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
    trial = StandInTrial("f1", cfg)
    cb.on_trial_start(0, [trial], trial)
    with pytest.raises(TrackingUnavailable, match=r"the MLflow store was unreachable for \d+ s \(tracking.outage_s = 1\)"):
        cb._writer.barrier()


def test_a_failed_write_is_retried_and_no_row_is_lost(store, tmp_path):
    """The first two writes of the metric rows fail (as a store that is down would): the rows stay
    queued and reach MLflow, once each, when the write goes through."""
    cb, trial = opened(store, tmp_path, "r1", {"flush_s": 0})
    failures = []
    cb.tracker.log_rows = failing_first(2, cb.tracker.log_rows, failures)
    for step in (64, 128, 192):
        cb.on_trial_result(0, [trial], trial, result(step, 1.0))
    cb._writer.barrier()
    trial.status = "TERMINATED"
    cb.on_trial_complete(0, [trial], trial)
    cb.on_experiment_end([trial])
    client, found = runs(store)
    assert len(failures) == 2 and all(n >= 1 for n in failures)  # two failed writes of queued rows
    assert [m.step for m in client.get_metric_history(found[0].info.run_id, M.mlflow_key(M.ENV_STEPS))] == [64, 128, 192]
    assert found[0].info.status == "FINISHED"


def test_stepwise_series_reach_mlflow_as_their_ends_and_changes_through_failed_writes(store, tmp_path):
    """A learning rate that changes once and a count that never does: MLflow gets each one's first
    point, both sides of the change and the last point (at the trial's last step), the measurements
    every step; writes that fail in between lose none of them (`tracking.series`)."""
    cb, trial = opened(store, tmp_path, "s1", {"flush_s": 0})
    failures = []
    cb.tracker.log_rows = failing_first(3, cb.tracker.log_rows, failures)
    lrs = {64: 3e-4, 128: 3e-4, 192: 3e-4, 256: 3e-4, 320: 1e-4, 384: 1e-4, 448: 1e-4}
    client = MlflowClient(store.uri)

    def curve(name):
        return sorted((m.step, m.value) for m in client.get_metric_history(cb.runs["s1"], M.mlflow_key(name)))

    for step, lr in lrs.items():
        trial.last_result = {**result(step, 500.0), M.LR: lr, M.WORKERS_REPLACED: 0}
        cb.on_trial_result(0, [trial], trial, trial.last_result)
        if step == 192:  # a checkpoint: every point before it is written (once the failing writes went through)
            ckpt = tmp_path / "ckpt-192"
            ckpt.mkdir()
            (ckpt / "state.json").write_text("192")
            cb.on_checkpoint(0, [trial], trial, StandInCheckpoint(str(ckpt)))
            cb._writer.barrier()
            assert curve(M.WORKERS_REPLACED) == [(64, 0), (192, 0)] and curve(M.LR) == [(64, 3e-4), (192, 3e-4)]
    trial.status = "TERMINATED"
    cb.on_trial_complete(0, [trial], trial)
    cb.on_experiment_end([trial])
    client, found = runs(store)
    assert len(failures) == 3
    assert curve(M.LR) == [(64, 3e-4), (192, 3e-4), (256, 3e-4), (320, 1e-4), (448, 1e-4)]
    assert curve(M.WORKERS_REPLACED) == [(64, 0), (192, 0), (448, 0)]
    assert found[0].data.tags["rlsweep.best_checkpoint_score"] == "500.0"  # (its tag rode with the rows)
    assert curve(M.EPISODE_RETURN_MEAN) == [(s, 500.0) for s in lrs]  # a measurement: every step, repeats too
    assert found[0].data.metrics[M.mlflow_key(M.LR)] == 1e-4  # MLflow's latest value: the last step's


def test_a_checkpoint_writes_its_rows_held_points_and_best_tag_in_one_call(store, tmp_path):
    """Rows waiting since the last flush, the stepwise points held back and the best checkpoint's score
    tag reach MLflow in one `log_rows` call at a checkpoint, as a run's placement tag rides with its
    first rows (each call costs the driver ~4-6 ms)."""
    cb, trial = opened(store, tmp_path, "c1", {"flush_s": 3600})
    real, calls = cb.tracker.log_rows, []

    def counted(run_id, rows, tags=None):
        calls.append((len(rows), dict(tags or {})))
        real(run_id, rows, tags)

    cb.tracker.log_rows = counted
    for step in (64, 128, 192):
        placed = {M.PLACEMENT: "trainable=0a1b2c3d"} if step == 64 else {}
        trial.last_result = {**result(step, 20.0), M.LR: 3e-4, **placed}
        cb.on_trial_result(0, [trial], trial, trial.last_result)
        if step == 64:  # a trial's first result is written at once, where it runs with it
            cb._writer.barrier()
            assert calls == [(1, {"rlsweep.placement": "trainable=0a1b2c3d"})]
            calls.clear()
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "state.json").write_text("192")
    cb.on_checkpoint(0, [trial], trial, StandInCheckpoint(str(ckpt)))
    cb._writer.barrier()
    assert len(calls) == 1 and calls[0][1] == {"rlsweep.best_checkpoint_score": "20.0"}
    lr = MlflowClient(store.uri).get_metric_history(cb.runs["c1"], M.mlflow_key(M.LR))
    assert sorted(m.step for m in lr) == [64, 192]  # the repeat at 192, held back, came with the rows


def test_a_best_checkpoint_uploaded_once_though_the_rows_after_it_are_retried(store, tmp_path):
    """The writes of the rows that follow a best checkpoint's upload fail twice: the checkpoint is not
    uploaded again on the retries, and its score tag reaches the run with the rows."""
    cb, trial = opened(store, tmp_path, "b1", {"flush_s": 0})
    real_upload, failures, uploads = cb.tracker.log_checkpoint, [], []

    def counted(run_id, path, folder):
        uploads.append(folder)
        real_upload(run_id, path, folder)

    cb.tracker.log_rows, cb.tracker.log_checkpoint = failing_first(2, cb.tracker.log_rows, failures), counted
    play(cb, trial, [(64, 10.0), (128, 30.0)], tmp_path)
    cb._writer.barrier()
    assert uploads == ["checkpoints/best", "checkpoints/best"] and len(failures) == 2
    assert cb.tracker.tags(cb.runs["b1"])["rlsweep.best_checkpoint_score"] == "30.0"


def test_rows_survive_a_driver_killed_while_the_store_was_down(store, tmp_path):
    """Every write fails (the store is down) and the driver dies without a word (no experiment end):
    the rows it had are in the journal on disk; `resume` writes them, then the replayed and new
    iterations, each step once."""
    cfg = small_config(tracking={"flush_s": 0, "checkpoint_wait_s": 0})
    run_dir = str(tmp_path / "j")
    first = callback(store, cfg, run_dir, sweep_parent(run_dir))
    first.setup()
    trial = StandInTrial("j_00000", cfg)
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
    history = client.get_metric_history(child.info.run_id, M.mlflow_key(M.EVAL_RETURN_MEAN))
    assert sorted((m.step, m.value) for m in history) == [(64, 64.0), (128, 128.0), (192, 192.0), (256, 256.0)]




@pytest.mark.parametrize("reached_at", [None, 128])
def test_the_cost_metric_is_logged_once_it_is_known_not_as_a_stand_in_every_iteration(store, tmp_path, reached_at):
    """env_steps_to_target stands at the budget until the target is reached: it goes to MLflow from the
    iteration that reached it on, or once, at the trial's end, as the score of a trial that never did
    (here one a scheduler stopped early: no stop criterion met)."""
    cfg = small_config(tracking={"flush_s": 0}, stop={"target_return": 50.0, "env_steps": 1000})
    cb = callback(store, cfg, str(tmp_path / "train-cost"))
    cb.setup()
    trial = StandInTrial("c1", cfg)
    cb.on_trial_start(0, [trial], trial)
    for step in (64, 128, 192):
        reached = reached_at is not None and step >= reached_at
        trial.last_result = {**result(step, 60.0 if reached else 10.0),
                             M.ENV_STEPS_TO_TARGET: float(reached_at if reached else 1000), M.SEEDS_AT_TARGET: int(reached)}
        cb.on_trial_result(0, [trial], trial, trial.last_result)
    trial.status = "TERMINATED"
    cb.on_trial_complete(0, [trial], trial)
    cb.on_experiment_end([trial])
    client, [run] = runs(store)
    history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, M.mlflow_key(M.ENV_STEPS_TO_TARGET))]
    assert history == ([(128, 128.0), (192, 128.0)] if reached_at else [(192, 1000.0)])
    assert [m.step for m in client.get_metric_history(run.info.run_id, M.mlflow_key(M.EVAL_RETURN_MEAN))] == [64, 128, 192]
