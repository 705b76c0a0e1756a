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
    """MLflow draws a chart section per prefix: the answer's metrics bare, the rest by what they measure."""
    from rlsweep import metrics as M

    tracker = store.tracker()
    run_id = tracker.start("m", {})
    tracker.log_rows(run_id, [(128, 1, {M.EVAL_RETURN_MEAN: 20.0, M.POLICY_LOSS: 0.5, M.TIME_SAMPLE_S: 0.1,
                                        M.WORKERS_REPLACED: 0, "eval_return_mean/seed_3": 19.0})])
    logged = set(tracker._client.get_run(run_id).data.metrics)
    assert logged == {"eval_return_mean", "training/policy_loss", "timing/time_sample_s", "rlsweep/workers_replaced",
                      "eval_return_mean/seed_3"}
    assert tracker.history(run_id, M.POLICY_LOSS) == [(128, 0.5)]  # read back by the name Tune gives it
    assert {M.mlflow_key(n).split("/")[0] for n in M.REPORTED if "/" in M.mlflow_key(n)} == set(M.SECTIONS)
    for name in (M.EVAL_RETURN_MEAN, M.ENV_STEPS, M.ENV_STEPS_TO_TARGET, M.EPISODE_RETURN_MEAN):
        assert M.mlflow_key(name) == name  # the answer: MLflow's first section


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
