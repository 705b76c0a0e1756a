"""The winner as an MLflow Model: built from a checkpoint, registered as `NAME@champion`, loaded
without unpickling anything."""

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from rlsweep.config import ConfigError
from rlsweep.ppo import checkpoint
from rlsweep.ppo.normalization import CLIP, EPS
from rlsweep.tracking import model
from rlsweep.tracking.tracker import Tracker
from tests.engine.test_video import trained_checkpoint


class Payload:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_a_registered_model_loads_by_alias_and_acts_as_the_checkpoint(store, tmp_path):
    ckpt = trained_checkpoint(tmp_path, sweep={"seeds_per_trial": 2}, policy={"normalize_observations": True})
    tracker = store.tracker()
    run = tracker.start("parent", {})
    name = f"m-{store.experiment}"
    assert model.log_and_register(tracker, run, ckpt, name) == f"{name} version 1 (@champion)"
    assert model.log_and_register(tracker, run, ckpt, name) == f"{name} version 2 (@champion)"  # a new version each time
    assert tracker.tags(run)[model.TAG_MODEL] == f"{name} version 2 (@champion)"
    client = MlflowClient(store.uri)
    assert int(client.get_model_version_by_alias(name, "champion").version) == 2

    folder = Path(tracker.download(store.uri, f"models:/{name}@champion", str(tmp_path / "dl")))
    meta = yaml.safe_load((folder / "MLmodel").read_text())
    assert meta["flavors"]["rlsweep"] == {"checkpoint": "checkpoint", "format_version": checkpoint.FORMAT_VERSION,
                                          "env_id": "CartPole-v1", "agents": 2}
    assert meta["flavors"]["python_function"]["loader_module"] == "rlsweep.tracking.model"
    inputs = json.loads(meta["signature"]["inputs"])
    assert inputs[0]["tensor-spec"] == {"dtype": "float32", "shape": [-1, 4]}
    example = np.asarray(json.loads((folder / "input_example.json").read_text())["inputs"], np.float32)
    assert example.shape == (2, 4)
    for ref in (f"models:/{name}/1", f"models:/{name}/latest"):  # by number, and the newest
        assert (Path(tracker.download(store.uri, ref, str(tmp_path / ref.rsplit("/", 1)[1]))) / "MLmodel").is_file()
    assert Tracker.model_version_uri(store.uri, f"models:/{name}/latest") == \
        Tracker.model_version_uri(store.uri, f"models:/{name}@champion")
    inner = model.policy_folder(folder, "models:/x")
    assert inner == (folder / "checkpoint").resolve() and checkpoint.is_whole(inner)

    # MLflow's own pyfunc loader: imports rlsweep's loader, which reads the weights itself
    pyfunc = mlflow.pyfunc.load_model(str(folder))
    actions = pyfunc.predict(example)
    _, weights, stats = checkpoint.load_policy(ckpt)  # agent 0's greedy actions, worked out here
    x = np.clip((example - stats[0].mean) / np.sqrt(stats[0].var + EPS), -CLIP, CLIP).astype(np.float32)
    for w, b in zip(weights["actor"][:-2:2], weights["actor"][1:-2:2], strict=True):
        x = np.tanh(x @ w[0] + b[0])
    logits = x @ weights["actor"][-2][0] + weights["actor"][-1][0]
    assert actions.shape == (2,) and actions.tolist() == logits.argmax(-1).tolist()


def test_a_pickle_planted_in_a_model_is_refused_and_never_runs(tmp_path):
    ckpt = trained_checkpoint(tmp_path)
    folder = model.build(ckpt, tmp_path / "model")
    marker = tmp_path / "payload-ran"
    learner = folder / "checkpoint" / checkpoint.LEARNER_FILE
    learner.write_bytes(pickle.dumps(Payload(f"touch {marker}")))
    with pytest.raises(ConfigError, match="does not match the checksum"):  # swapped: the checksum says so
        checkpoint.load_policy(model.policy_folder(folder, "m"))
    state_file = folder / "checkpoint" / checkpoint.STATE_FILE
    state = json.loads(state_file.read_text())
    state["learner_sha256"] = hashlib.sha256(learner.read_bytes()).hexdigest()  # and the checksum forged
    state_file.write_text(json.dumps(state))
    with pytest.raises(ConfigError, match="not a weights-only file; refused, nothing in it was run"):
        checkpoint.load_policy(model.policy_folder(folder, "m"))
    with pytest.raises(ConfigError, match="not a weights-only file"):
        mlflow.pyfunc.load_model(str(folder))
    assert not marker.exists()


def test_a_model_that_is_not_rlsweeps_is_refused(tmp_path):
    ckpt = trained_checkpoint(tmp_path)
    folder = model.build(ckpt, tmp_path / "model")
    meta = yaml.safe_load((folder / "MLmodel").read_text())
    meta["flavors"]["rlsweep"]["checkpoint"] = "../../elsewhere"
    (folder / "MLmodel").write_text(yaml.safe_dump(meta))
    with pytest.raises(ConfigError, match="names a checkpoint outside the model"):
        model.policy_folder(folder, "m")
    del meta["flavors"]["rlsweep"]
    (folder / "MLmodel").write_text(yaml.safe_dump(meta))
    with pytest.raises(ConfigError, match="not one of rlsweep's"):
        model.policy_folder(folder, "m")
    shutil.rmtree(folder)
    with pytest.raises(FileExistsError):  # never built over something there
        model.build(ckpt, ckpt)
