"""`engine.video`: a GIF of a checkpoint's deterministic episode, and a note for envs that cannot render."""

import pytest
from PIL import Image

from rlsweep.config import validate
from rlsweep.engine import video
from rlsweep.engine.training import Training
from rlsweep.engine.workers import LocalWorkers
from rlsweep.ppo import checkpoint
from tests.conftest import small_config


def trained_checkpoint(tmp_path, env_id="CartPole-v1", **sections):
    """A checkpoint of one iteration of a small experiment, in tmp_path/ckpt (made without Ray)."""
    cfg = validate(small_config(env_id, workers=0, **sections))
    t = Training(cfg, LocalWorkers(cfg))
    t.iterate()
    checkpoint.write(tmp_path / "ckpt", *t.state())
    t.close()
    return tmp_path / "ckpt"


def test_a_checkpoints_episode_becomes_a_small_looping_gif(tmp_path):
    """One deterministic episode of the checkpoint's first agent, from a seeded reset: the GIF's frames
    follow the steps (50 Hz CartPole kept at 25 frames a second), scaled to 320 px wide."""
    ckpt = trained_checkpoint(tmp_path, policy={"normalize_observations": True}, sweep={"seeds_per_trial": 2})
    v = video.record_checkpoint(str(ckpt), tmp_path / "a.gif", seed=4)
    assert v.complete and v.steps >= 8 and v.episode_return == v.steps  # CartPole: 1 a step, to its end
    with Image.open(tmp_path / "a.gif") as im:
        assert im.format == "GIF" and im.size == (320, 213) and im.info["loop"] == 0
        # a frame for the reset and every second step (the last step's too); identical ones merged
        assert 2 <= im.n_frames <= 1 + -(-v.steps // 2) and im.info["duration"] == 40
    assert 1_000 < v.size_bytes == (tmp_path / "a.gif").stat().st_size < 2_000_000
    assert abs(v.seconds - (1 + -(-v.steps // 2)) / 25) < 1e-9  # the reset's frame, then every second step's
    # the same seed plays the same episode; the deterministic policy is the evaluator's
    again = video.record_checkpoint(str(ckpt), tmp_path / "b.gif", seed=4)
    assert (again.steps, again.episode_return) == (v.steps, v.episode_return)
    assert (tmp_path / "a.gif").read_bytes() == (tmp_path / "b.gif").read_bytes()
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize("env_id,why", [
    ("tests.faulty_envs:NoRenderCartPole", "has no rgb_array render mode"),
    ("tests.faulty_envs:BrokenRenderCartPole", "its renderer failed: RuntimeError: no display to render to"),
])
def test_an_env_that_cannot_render_gets_a_note_and_no_file(tmp_path, env_id, why):
    ckpt = trained_checkpoint(tmp_path, env_id)
    with pytest.raises(video.CannotRender, match=why):
        video.record_checkpoint(str(ckpt), tmp_path / "v.gif")
    assert not (tmp_path / "v.gif").exists() and not list(tmp_path.glob("*.partial"))
    # in a child process (as a sweep's end records its winner): the note, never an exception
    note = video.record_apart(str(ckpt), tmp_path / "v.gif")
    assert isinstance(note, str) and note.startswith("no video: the env cannot render: ") and why in note, note


def test_a_recorder_that_dies_is_a_note(tmp_path):
    """A checkpoint the recorder cannot read (here: none at all) ends its child process; the caller
    gets one line saying so."""
    note = video.record_apart(str(tmp_path / "missing"), tmp_path / "v.gif")
    assert isinstance(note, str) and note.startswith("no video: the recorder failed ("), note


def test_a_recording_past_its_time_is_stopped_and_its_process_is_gone(tmp_path):
    """A recording started in a child process (as a sweep's end films its winner while the model is
    registered) that takes longer than its limit: a note, and the child killed, not left behind."""
    ckpt = trained_checkpoint(tmp_path)
    recording = video.Recording(str(ckpt), tmp_path / "v.gif", timeout_s=0.05)  # (given at least 1 s)
    note = recording.result()
    assert note == "no video: recording took over 0 s", note  # (importing torch alone takes longer)
    assert recording._proc.returncode is not None  # reaped
    assert not (tmp_path / "v.gif").exists()
