"""Checkpoints Tune deleted stay recoverable until a signed state can no longer name them."""

import os
import shutil
import time

from rlsweep.tuning.retention import KEPT, Retainer, restore


def checkpoint(sweep, trial, n, content=b"weights"):
    d = sweep / trial / f"checkpoint_{n:06d}"
    d.mkdir(parents=True)
    (d / "learner.pt").write_bytes(content)
    (d / "state.json").write_text("{}")
    return d


def test_a_deleted_checkpoint_is_kept_until_a_later_snapshot_is_signed_and_put_back_on_resume(tmp_path):
    sweep = tmp_path / "sweep"
    first = checkpoint(sweep, "trial_a", 1)
    r = Retainer(sweep)
    r.keep(first)
    kept = sweep / KEPT / "trial_a" / first.name
    assert (kept / "learner.pt").read_bytes() == b"weights"
    assert os.stat(kept / "learner.pt").st_ino == os.stat(first / "learner.pt").st_ino  # a link, not a copy
    r.keep(tmp_path / "elsewhere")  # not the sweep's: ignored
    r.prune(state_signed_at=time.time())
    assert kept.exists()  # its original is still there

    snapshot_before = time.time()
    shutil.rmtree(first)  # what Tune does when a newer checkpoint comes
    r.prune(state_signed_at=snapshot_before)  # the signed state predates the deletion: it may name it
    assert kept.exists()
    # a driver killed now: resume puts it back where the signed state looks for it
    assert restore(sweep) == [f"trial_a/{first.name} put back: Tune had deleted it after the last state signed"]
    assert (first / "learner.pt").read_bytes() == b"weights" and not kept.exists()

    r = Retainer(sweep)
    r.keep_all()
    assert kept.exists()
    shutil.rmtree(first)
    r.prune(state_signed_at=snapshot_before)  # first seen gone now
    time.sleep(0.01)
    r.prune(state_signed_at=time.time())  # a snapshot taken after it went is signed
    assert not kept.exists() and restore(sweep) == []
    second = checkpoint(sweep, "trial_a", 2)
    r.keep(second)
    r.drop()  # the sweep ended with its final state signed
    assert not (sweep / KEPT).exists() and second.exists()
