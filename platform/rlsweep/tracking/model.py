"""The winning policy as an MLflow Model, registered with the alias `champion`.

A model is a folder that nothing needs unpickling to load:

    MLmodel                     flavors `rlsweep` (where the checkpoint is, its format) and
                                `python_function` (loader: this module's `_load_pyfunc`), the
                                signature (observations in, actions out) and the input example's name
    checkpoint/learner.pt       the checkpoint itself (`ppo.checkpoint`): tensors read with
    checkpoint/state.json       torch.load(weights_only=True), learner.pt checked against its SHA-256
    input_example.json          two observations from the env's reset
    serving_input_example.json

`rlsweep evaluate models:/NAME@champion` downloads it and reads the checkpoint itself (`policy_folder`);
it never goes through MLflow's pyfunc loader. The pyfunc flavor is for others: `mlflow.pyfunc.load_model`
imports this module and gets a greedy policy of the first agent, again without unpickling anything.
"""

from __future__ import annotations

import json
import platform
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rlsweep.config import ConfigError

FOLDER = "model"  # the artifact folder on the run
ALIAS = "champion"
FLAVOR = "rlsweep"
CHECKPOINT = "checkpoint"
EXAMPLE = "input_example.json"
SERVING_EXAMPLE = "serving_input_example.json"
TAG_MODEL = "rlsweep.model"  # on the run the model was logged to: `NAME version N (@champion)`, or why none


def build(checkpoint: str | Path, out: str | Path) -> Path:
    """Writes the model of `checkpoint`'s policy into the new folder `out`; returns it.

    The checkpoint is loaded first (whole, weights only), so a model is only ever made of one that plays.
    """
    from mlflow.models import Model, ModelSignature
    from mlflow.types import Schema, TensorSpec

    from rlsweep.envs import make_vector_env, space_info
    from rlsweep.ppo import checkpoint as ckpt

    cfg, weights, _ = ckpt.load_policy(checkpoint)
    space = space_info(cfg.env)
    out = Path(out)
    out.mkdir(parents=True)  # a new folder: never built over one there
    (out / CHECKPOINT).mkdir()
    for name in (ckpt.LEARNER_FILE, ckpt.STATE_FILE):
        shutil.copyfile(Path(checkpoint) / name, out / CHECKPOINT / name)
    env = make_vector_env(cfg.env, 2)
    try:
        example = np.asarray(env.reset(seed=0)[0])  # the env's own dtype and shape: raw observations fit
    finally:
        env.close()
    action = TensorSpec(np.dtype(np.int64), (-1,), "action") if space.discrete else \
        TensorSpec(np.dtype(np.float32), (-1, space.act_dim), "action")
    signature = ModelSignature(inputs=Schema([TensorSpec(example.dtype, (-1, *example.shape[1:]), "observation")]),
                               outputs=Schema([action]))
    for name in (EXAMPLE, SERVING_EXAMPLE):
        (out / name).write_text(json.dumps({"inputs": example.tolist()}))
    model = Model(signature=signature, saved_input_example_info={
        "artifact_path": EXAMPLE, "type": "ndarray", "serving_input_path": SERVING_EXAMPLE})
    model.add_flavor("python_function", loader_module=__name__, data=CHECKPOINT, env=None,
                     python_version=platform.python_version())
    model.add_flavor(FLAVOR, checkpoint=CHECKPOINT, format_version=ckpt.FORMAT_VERSION, env_id=cfg.env.id,
                     agents=int(weights["actor"][0].shape[0]))
    model.save(str(out / "MLmodel"))
    return out


def policy_folder(folder: str | Path, ref: str) -> Path:
    """The checkpoint folder of a downloaded model (`ref` names it in messages); the folder itself when
    it is a checkpoint, not a model. Reads MLmodel as plain YAML: nothing in it is imported or run."""
    d = Path(folder)
    if not (d / "MLmodel").is_file():
        return d
    try:
        meta = yaml.safe_load((d / "MLmodel").read_text())
        inner = (meta.get("flavors") or {})[FLAVOR]["checkpoint"]
    except (yaml.YAMLError, AttributeError, KeyError, TypeError):
        raise ConfigError(f"{ref}: an MLflow model, but not one of rlsweep's (its MLmodel has no "
                          f"'{FLAVOR}' flavor naming a checkpoint)") from None
    path = (d / str(inner)).resolve()
    if not path.is_relative_to(d.resolve()):
        raise ConfigError(f"{ref}: its MLmodel names a checkpoint outside the model ({inner!r})")
    return path


def log_and_register(tracker: Any, run_id: str, checkpoint: str | Path, name: str, folder: str = FOLDER) -> str:
    """Builds the model of `checkpoint`, logs it to the run's artifact `folder` and registers it as a
    new version of `name` with the alias `champion` (moved to it from any earlier version); returns
    what the run's `rlsweep.model` tag then says."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rlsweep-model-") as d:
        tracker.log_artifacts(run_id, build(checkpoint, Path(d) / FOLDER), folder)
    version = tracker.register(run_id, folder, name, ALIAS)
    said = f"{name} version {version} (@{ALIAS})"
    tracker.set_tag(run_id, TAG_MODEL, said)
    return said


class Policy:
    """The pyfunc model: the first agent's greedy actions for a batch of observations."""

    def __init__(self, folder: str | Path):
        from rlsweep.envs import space_info
        from rlsweep.ppo import checkpoint as ckpt
        from rlsweep.ppo.policy import NumpyPolicy, one_agent

        cfg, weights, stats = ckpt.load_policy(folder)
        self.policy = NumpyPolicy(space_info(cfg.env), cfg.policy)
        self.policy.load(one_agent(weights, 0))
        self.stats = None if stats is None else stats[:1]

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        from rlsweep.ppo.normalization import normalize_each

        if isinstance(model_input, dict):  # MLflow hands a named tensor input over as {name: array}
            model_input = model_input.get("observation", next(iter(model_input.values())))
        x = self.policy.prepare(np.asarray(model_input).reshape(1, -1, *self.policy.space.obs_shape))
        if self.stats is not None:
            x = normalize_each(self.stats, x)
        return self.policy.to_env(self.policy.greedy(x))[0]


def _load_pyfunc(data_path: str) -> Policy:
    """MLflow's pyfunc entry point (`python_function.loader_module`)."""
    return Policy(data_path)
