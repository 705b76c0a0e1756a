"""The parts of `tuning.full_disk` that need no full disk: what counts as one, and the cleanup after it
(the whole path, on a real full tmpfs, is tests/e2e/test_full_disk.py)."""

import pickle

from rlsweep import compat
from rlsweep.ppo import checkpoint
from rlsweep.ranking import trial_row
from rlsweep.tuning.full_disk import drop_unreadable_error_pickles, no_space, no_space_line


def test_a_full_disk_is_told_by_its_errno_or_its_words():
    assert no_space(str(OSError(28, "No space left on device")))
    assert no_space("OSError: [Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device")
    assert not no_space("OSError: [Errno 30] Read-only file system")
    assert not no_space("ValueError: space left unfilled")


def test_error_pickles_cut_short_are_dropped_and_whole_ones_kept(tmp_path):
    whole, cut = tmp_path / "trial_a", tmp_path / "trial_b"
    for d in (whole, cut):
        d.mkdir()
    data = pickle.dumps(RuntimeError("an error"))
    (whole / compat.TRIAL_ERROR_PICKLE).write_bytes(data)
    (cut / compat.TRIAL_ERROR_PICKLE).write_bytes(data[: len(data) // 2])
    drop_unreadable_error_pickles(tmp_path)
    assert (whole / compat.TRIAL_ERROR_PICKLE).is_file()
    assert not (cut / compat.TRIAL_ERROR_PICKLE).exists()


def test_a_checkpoint_a_full_disk_cut_short_is_never_the_one_picked(tmp_path):
    trial = tmp_path / "trial_00000"
    state = {"config": {"name": "x"}, "iterations": 1}
    checkpoint.write(trial / "checkpoint_000001", b"learner bytes" * 100, state)
    checkpoint.write(trial / "checkpoint_000002", b"learner bytes" * 100, state)
    (trial / "checkpoint_000002" / checkpoint.LEARNER_FILE).write_bytes(b"learner")  # a copy cut short
    (trial / "params.json").write_text('{"seed": 1}')
    assert checkpoint.is_whole(trial / "checkpoint_000001") and not checkpoint.is_whole(trial / "checkpoint_000002")
    assert compat.latest_checkpoint(trial) == trial / "checkpoint_000002"  # by name alone
    assert trial_row(trial)["checkpoint"] == str(trial / "checkpoint_000001")
    assert no_space_line("/r", trial).endswith(f"trial trial_00000 keeps its last whole checkpoint, "
                                               f"{trial / 'checkpoint_000001'}")
