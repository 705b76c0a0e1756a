"""The checkpoint format: what is checked and the errors a user sees."""

import json

import pytest

from rlsweep.config import ConfigError
from rlsweep.ppo import checkpoint
from tests.conftest import small_config


def write(d, **state):
    checkpoint.write(d, b"tensors", {"config": small_config(), **state})
    return d


def test_round_trip(tmp_path):
    write(tmp_path / "c", env_steps=5)
    data, state = checkpoint.read(tmp_path / "c")
    assert data == b"tensors" and state["env_steps"] == 5 and state["format_version"] == checkpoint.FORMAT_VERSION


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(ConfigError, match="no such checkpoint directory"):
        checkpoint.read(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / checkpoint.STATE_FILE).write_text("{}")
    with pytest.raises(ConfigError, match="missing learner.pt"):
        checkpoint.read(tmp_path / "half")


def test_other_format_version(tmp_path):
    d = write(tmp_path / "c")
    state = json.loads((d / checkpoint.STATE_FILE).read_text())
    state["format_version"] = 99
    (d / checkpoint.STATE_FILE).write_text(json.dumps(state))
    with pytest.raises(ConfigError, match="checkpoint format 99, expected 1"):
        checkpoint.read(d)


@pytest.mark.parametrize("change, key", [
    ({"env": {"id": "Acrobot-v1"}}, "env.id"),
    ({"policy": {"hidden_sizes": [32]}}, "policy.hidden_sizes"),
    ({"policy": {"normalize_observations": True}}, "policy.normalize_observations"),
])
def test_a_checkpoint_of_another_network_is_refused(tmp_path, change, key):
    d = write(tmp_path / "c")
    checkpoint.check(d, small_config())  # the same experiment fits
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        checkpoint.check(d, small_config(**change))


def test_a_truncated_learner_file_is_caught_by_its_checksum(tmp_path):
    d = tmp_path / "c"
    checkpoint.write(d, b"tensors and more tensors", {"config": small_config()})
    (d / checkpoint.LEARNER_FILE).write_bytes(b"tensors")
    for call in (lambda: checkpoint.read(d), lambda: checkpoint.check(d, small_config())):
        with pytest.raises(ConfigError, match="learner.pt does not match the checksum"):
            call()


@pytest.mark.parametrize("content, fragment", [
    ('{"format_version": 1, "conf', "state.json is not valid JSON"),
    (b"\xff\xfe\x00", "state.json is not valid JSON"),
    ("[1, 2]", "does not hold an rlsweep checkpoint's state"),
])
def test_a_corrupt_state_file_is_one_clear_error(tmp_path, content, fragment):
    d = write(tmp_path / "c")
    path = d / checkpoint.STATE_FILE
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError, match=fragment):
        checkpoint.check(d)


def test_writes_leave_no_temporary_files(tmp_path):
    d = write(tmp_path / "c")
    write(d)  # saved again over itself
    assert sorted(p.name for p in d.iterdir()) == [checkpoint.LEARNER_FILE, checkpoint.STATE_FILE]
