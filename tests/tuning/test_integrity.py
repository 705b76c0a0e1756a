"""Resume trusts only what rlsweep signed: the manifest, its HMAC, the signed copies (no Ray here;
the real sweep with a planted payload is in test_sweep.py)."""

import json
import os
import pickle

import pytest

from rlsweep.config import ConfigError
from rlsweep.tuning.integrity import BACKUP, MANIFEST, SIGNED, UNTRUSTED, Signer, verify
from tests.conftest import rlsweep, small_config


class Payload:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def tune_dir(tmp_path):
    d = tmp_path / "sweep"
    (d / "trial_a").mkdir(parents=True)
    (d / "tuner.pkl").write_bytes(pickle.dumps({"tuner": 1}))
    (d / "experiment_state-1.json").write_text('{"trials": []}')
    (d / "searcher-state-1.pkl").write_bytes(pickle.dumps([1, 2]))
    (d / "trial_a" / "params.pkl").write_bytes(pickle.dumps({"lr": 0.1}))
    return d


def test_a_signed_directory_verifies_unchanged(tmp_path):
    d = tune_dir(tmp_path)
    Signer(d).sign()
    assert verify(d) == []
    assert set(json.loads((d / MANIFEST).read_text())["files"]) == {
        "tuner.pkl", "experiment_state-1.json", "searcher-state-1.pkl", "trial_a/params.pkl"}


def test_changed_state_is_replaced_by_its_signed_copy_and_unsigned_pickles_set_aside(tmp_path):
    d = tune_dir(tmp_path)
    signer = Signer(d)
    signer.sign()
    signer.sign()  # nothing changed: nothing rewritten
    (d / "tuner.pkl").write_bytes(pickle.dumps(Payload(f"touch {tmp_path / 'ran'}")))
    (d / "trial_a" / "error.pkl").write_bytes(b"unsigned")
    (d / "experiment_state-2.json").write_text("{}")  # written after the last signature
    (d / "searcher-state-1.pkl").unlink()
    notes = verify(d)
    assert pickle.loads((d / "tuner.pkl").read_bytes()) == {"tuner": 1}
    assert pickle.loads((d / "searcher-state-1.pkl").read_bytes()) == [1, 2]
    assert (d / UNTRUSTED / "trial_a" / "error.pkl").exists() and not (d / "trial_a" / "error.pkl").exists()
    assert (d / UNTRUSTED / "experiment_state-2.json").exists()
    assert len(notes) == 4 and any("tuner.pkl changed after it was signed" in n for n in notes)
    assert verify(d) == [] and not (tmp_path / "ran").exists()


def test_a_later_signature_covers_new_state(tmp_path):
    d = tune_dir(tmp_path)
    signer = Signer(d)
    signer.sign()
    (d / "experiment_state-1.json").write_text('{"trials": [1]}')
    signer.sign(trials=False)
    assert verify(d) == [] and (d / "experiment_state-1.json").read_text() == '{"trials": [1]}'


@pytest.mark.parametrize("tamper, fragment", [
    (lambda d: (d / MANIFEST).unlink(), "has no .rlsweep_manifest.json"),
    (lambda d: [(d / f).write_text("[]") for f in (MANIFEST, f"{SIGNED}/{BACKUP}")], "is not a manifest rlsweep wrote"),
    (lambda d: (d / MANIFEST).write_text(json.dumps({**json.loads((d / MANIFEST).read_text()),
                                                     "files": {"tuner.pkl": "0" * 64}})),
     "signature does not match"),
])
def test_a_directory_rlsweep_did_not_sign_is_refused(tmp_path, tamper, fragment):
    d = tune_dir(tmp_path)
    Signer(d).sign()
    tamper(d)
    with pytest.raises(ConfigError, match=fragment):
        verify(d)


def test_another_users_key_is_refused(tmp_path, monkeypatch):
    d = tune_dir(tmp_path)
    monkeypatch.setenv("RLSWEEP_KEY_FILE", str(tmp_path / "theirs.key"))
    Signer(d).sign()
    assert (tmp_path / "theirs.key").stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("RLSWEEP_KEY_FILE", str(tmp_path / "mine.key"))
    Signer(tmp_path / "other").sign()  # makes this user's key
    with pytest.raises(ConfigError, match="signature does not match this user's key"):
        verify(d)


def test_the_key_is_never_pickled(tmp_path):
    signer = Signer(tune_dir(tmp_path))
    signer.sign()
    key = open(os.environ["RLSWEEP_KEY_FILE"], "rb").read()
    assert key not in pickle.dumps(signer)


def test_resume_of_a_copied_sweep_with_a_payload_exits_2_before_anything_runs(tmp_path):
    """`rlsweep resume` on a directory from elsewhere: one line, exit 2, the payload never ran."""
    d = tmp_path / "results" / "copied"
    d.mkdir(parents=True)
    marker = tmp_path / "ran"
    (d / "tuner.pkl").write_bytes(pickle.dumps(Payload(f"touch {marker}")))
    (d / "rlsweep_sweep.json").write_text(json.dumps({
        "name": "copied", "metric": "eval_return_mean", "mode": "max", "experiment": small_config(),
        "params": ["ppo.lr"], "trials": 4, "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}))
    r = rlsweep("resume", d, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot be resumed safely" in lines[0] and "has no .rlsweep_manifest.json" in lines[0]
    assert not marker.exists() and (d / "tuner.pkl").exists()


def test_tunes_staged_state_is_signed_before_its_upload_lands(tmp_path):
    """Tune writes its state into a staging folder and uploads it later: the newest state is what is
    signed, so a driver killed before the upload resumes from it, not from the older one on disk."""
    d = tune_dir(tmp_path)
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "experiment_state-1.json").write_text('{"trials": ["newest"]}')
    Signer(d, staging=staging).sign()
    assert json.loads((staging / MANIFEST).read_text()) == json.loads((d / MANIFEST).read_text())
    notes = verify(d)  # the upload never landed
    assert (d / "experiment_state-1.json").read_text() == '{"trials": ["newest"]}'
    assert any("experiment_state-1.json changed after it was signed" in n for n in notes)


def test_a_manifest_overwritten_by_an_upload_is_written_again(tmp_path):
    d = tune_dir(tmp_path)
    signer = Signer(d)
    signer.sign()
    current = (d / MANIFEST).read_bytes()
    (d / MANIFEST).write_bytes(current.replace(b'"files"', b'"files" ', 1))  # a stale copy lands
    signer.sign()
    assert (d / MANIFEST).read_bytes() == current and verify(d) == []


def test_a_manifest_cut_short_by_a_full_disk_is_read_from_its_signed_copy(tmp_path):
    """Tune's upload of its staging folder copies the manifest over the sweep's, not atomically: on a
    full disk it is cut short. rlsweep's own copy in .rlsweep_signed/ (written whole or not at all, and
    signed alike) stands in, and the manifest is made whole again."""
    d = tune_dir(tmp_path)
    Signer(d).sign()
    whole = (d / MANIFEST).read_bytes()
    (d / MANIFEST).write_bytes(whole[: len(whole) // 2])
    assert verify(d) == [f"{MANIFEST} was cut short (a full disk?); its signed copy in {SIGNED}/ is used"]
    assert (d / MANIFEST).read_bytes() == whole and verify(d) == []
