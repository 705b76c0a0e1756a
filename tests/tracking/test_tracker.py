"""The Tracker, against a real SQLite MLflow store."""

from pathlib import Path


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




def test_metrics_go_to_mlflow_under_their_chart_sections(store):
    """MLflow draws a chart section per prefix, custom ones alphabetically before its own two: the
    sections' names put the answer first (cost, then evaluation) and rlsweep's bookkeeping last."""
    from rlsweep import metrics as M

    tracker = store.tracker()
    run_id = tracker.start("m", {})
    tracker.log_rows(run_id, [(128, 1, {M.EVAL_RETURN_MEAN: 20.0, M.POLICY_LOSS: 0.5, M.TIME_SAMPLE_S: 0.1,
                                        M.WORKERS_REPLACED: 0, "eval_return_mean/seed_3": 19.0,
                                        "env_steps_to_target_ci_low": 3.0, M.ENV_STEPS: 128})])
    logged = set(tracker._client.get_run(run_id).data.metrics)
    assert logged == {"evaluation/eval_return_mean", "training/policy_loss", "timing/time_sample_s",
                      "system/workers_replaced", "evaluation/eval_return_mean/seed_3",
                      "cost/env_steps_to_target_ci_low", "rollouts/env_steps"}
    assert tracker.history(run_id, M.POLICY_LOSS) == [(128, 0.5)]  # read back by the name Tune gives it
    assert all("/" in M.mlflow_key(n) for n in M.REPORTED)  # every reported metric in a section
    assert sorted(M.SECTIONS)[:2] == ["cost", "evaluation"]  # MLflow's order: the answer first
    assert M.mlflow_key("best_eval_return_mean") == "best_eval_return_mean"  # a parent's answer: bare


def test_a_runs_last_rows_and_its_status_go_in_one_batch_however_many_rows(store):
    """`set_status` with a run's last rows: MLflow's limit (1000 metrics and tags per batch) is kept,
    every row lands, the status tags and the run's end too; a status alone is one call."""
    from rlsweep import metrics as M
    from rlsweep.tracking.status import Outcome, RunStatus

    tracker = store.tracker()
    calls, real = [], tracker._client.log_batch

    def counted(run_id, metrics=(), params=(), tags=()):
        calls.append((len(metrics), len(tags)))
        assert len(metrics) + len(tags) <= 1000
        return real(run_id, metrics=metrics, params=params, tags=tags)

    tracker._client.log_batch = counted
    run_id = tracker.start("many", {})
    rows = [(step, 1, {M.POLICY_LOSS: float(step), M.ENV_STEPS: step}) for step in range(1, 1001)]
    tracker.set_status(run_id, Outcome(RunStatus.ERROR, "it broke"), rows)
    assert calls == [(998, 0), (998, 0), (4, 2)]
    run = tracker._client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["rlsweep.reason"] == "it broke"
    assert len(tracker.history(run_id, M.POLICY_LOSS)) == 1000
    alone = tracker.start("alone", {})
    calls.clear()
    tracker.set_status(alone, Outcome(RunStatus.FINISHED))
    assert calls == [(0, 1)] and tracker._client.get_run(alone).info.status == "FINISHED"


def test_the_winner_is_marked_and_a_winner_overturned_is_unmarked(store):
    from rlsweep.tracking.parents import mark_winner
    from rlsweep.tracking.runs import TAG_WINNER

    tracker = store.tracker()
    a, b = tracker.start("001 lr=0.1", {"k": "t"}), tracker.start("002 lr=0.2", {"k": "t"})
    mark_winner(tracker, a, tracker.search(k="t"))
    mark_winner(tracker, a, tracker.search(k="t"))  # a summary written again marks it once
    runs = {r.run_id: r for r in tracker.search(k="t")}
    assert runs[a].name == "001 lr=0.1 (winner)" and runs[a].tags[TAG_WINNER] == "true"
    assert runs[b].name == "002 lr=0.2" and TAG_WINNER not in runs[b].tags
    mark_winner(tracker, b, tracker.search(k="t"))  # the confirmation round overturned it
    runs = {r.run_id: r for r in tracker.search(k="t")}
    assert runs[a].name == "001 lr=0.1" and TAG_WINNER not in runs[a].tags
    assert runs[b].name == "002 lr=0.2 (winner)" and runs[b].tags[TAG_WINNER] == "true"
