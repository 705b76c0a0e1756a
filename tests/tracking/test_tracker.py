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


