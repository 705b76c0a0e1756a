"""Environment construction and plain-data snapshots of environment state.

Every vector env rlsweep builds runs in gymnasium's NEXT_STEP autoreset mode: the step that ends an
episode returns that episode's final observation, and the following step ignores its action, resets
the sub-env and returns the reset observation with reward 0. The sampler marks that step invalid and
uses the value of the final observation to bootstrap truncations (see `gae.py`).
"""

from __future__ import annotations

import copy
import importlib
import logging
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import EnvSpec
from gymnasium.vector import AutoresetMode, VectorEnv

from rlsweep.config import ConfigError, EnvConfig

log = logging.getLogger(__name__)

# The rlsweep extra that installs what an env family needs: gymnasium's own hint, `gymnasium[box2d]`,
# pins box2d-py, which only builds where swig is installed; `box2d` is its wheel.
EXTRAS = {"gymnasium.envs.mujoco": "mujoco", "gymnasium.envs.box2d": "box2d"}


# The rlsweep extra for an env id's namespace, imported before the id is looked up: gymnasium finds
# these ids only once their package registered them.
NAMESPACES = {"ALE": ("ale_py", "atari")}

# A vector env may report whole-episode scores in its info under SCORE (NaN where no episode ended),
# with their lengths under SCORE_LENGTH: the sampler then reports those as the episodes' returns and
# lengths instead of summing rewards (the Atari preset: the unclipped score of a whole game, while the
# rewards learned from are clipped and a lost life ends an episode).
SCORE, SCORE_LENGTH = "rlsweep_episode_score", "rlsweep_episode_length"


@dataclass(frozen=True)
class SpaceInfo:
    """What the networks need to know about an env: its observations' shape and dtype, and the action space."""

    obs_dim: int  # the observation's size, flattened
    discrete: bool
    act_dim: int  # number of actions (Discrete) or action vector size (Box)
    act_low: np.ndarray | None = None
    act_high: np.ndarray | None = None
    obs_shape: tuple[int, ...] = ()
    obs_dtype: str = "float32"


def _import_namespace(cfg: EnvConfig) -> None:
    """Imports the package that registers the env's namespace (`NAMESPACES`; the Atari preset's is
    ale_py's); a ConfigError naming the rlsweep extra when it is not installed."""
    namespace = cfg.id.partition("/")[0] if "/" in cfg.id else ("ALE" if cfg.preset == "atari" else None)
    if namespace not in NAMESPACES or ":" in cfg.id:
        return
    package, extra = NAMESPACES[namespace]
    try:
        importlib.import_module(package)
    except ImportError:
        what = "env.preset" if cfg.preset else "env.id"
        raise ConfigError(f"key '{what}': {cfg.preset or cfg.id!r} needs a package that is not installed "
                          f"({package}): pip install 'rlsweep[{extra}]'") from None


def _after_plugins(env_id: str) -> EnvSpec | None:
    """The spec of `env_id` once the installed packages of `NAMESPACES` have registered their envs
    (they register ids outside their namespace too), or None."""
    for package, _ in NAMESPACES.values():
        if package not in sys.modules:
            try:
                importlib.import_module(package)
            except ImportError:
                continue
    try:
        return gym.spec(env_id)
    except gym.error.Error:
        return None


def resolve_spec(cfg: EnvConfig) -> EnvSpec:
    """A registered id, 'module:Registered-v0', or 'package.module:Class' -> an EnvSpec."""
    env_id = cfg.id
    _import_namespace(cfg)
    if ":" in env_id:
        module_name, _, name = env_id.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as e:  # noqa: BLE001 - whatever the module does wrong (a syntax error, a raise) is one line
            why = type(e).__name__ + (f": {line}" if (line := (str(e).strip().splitlines() or [""])[0]) else "")
            raise ConfigError(f"key 'env.id': {env_id!r}: cannot import module {module_name!r} ({why})") from None
        if name in gym.registry:
            spec = gym.spec(name)
        elif isinstance(getattr(module, name, None), type):
            if not issubclass(getattr(module, name), gym.Env):  # nothing else is called with the config's kwargs
                raise ConfigError(f"key 'env.id': {env_id!r} is a class but not a gymnasium.Env")
            spec = EnvSpec(id=f"{module_name}.{name}", entry_point=env_id)
        else:
            raise ConfigError(f"key 'env.id': {env_id!r}: {module_name!r} has no class or registered env {name!r}")
    else:
        try:
            spec = gym.spec(env_id)
        except gym.error.Error as e:
            spec = _after_plugins(env_id)  # an id such as BreakoutNoFrameskip-v4, registered by an extra
            if spec is None:
                raise ConfigError(f"key 'env.id': {env_id!r} is not a registered gymnasium environment ({e})") from None
    spec = copy.deepcopy(spec)
    if cfg.max_episode_steps is not None:
        spec.max_episode_steps = cfg.max_episode_steps
    return spec


def missing_package(cfg: EnvConfig, spec: EnvSpec, error: Exception) -> ConfigError:
    """The one line for an env whose package is not installed, naming the rlsweep extra that has it."""
    entry = spec.entry_point if isinstance(spec.entry_point, str) else ""
    extra = next((x for prefix, x in EXTRAS.items() if entry.startswith(prefix)), None)
    missing = getattr(error, "name", None) or getattr(error.__cause__, "name", None)
    if extra is None:  # then the env's own message is the only hint there is
        return ConfigError(f"key 'env.id': {cfg.id!r} needs a package that is not installed: {error}")
    return ConfigError(f"key 'env.id': {cfg.id!r} needs a package that is not installed"
                       f"{f' ({missing})' if missing else ''}: pip install 'rlsweep[{extra}]'")


def _mujoco_warnings_to_log() -> None:
    """MuJoCo writes its warnings (an unstable simulation) to MUJOCO_LOG.TXT in the working directory
    and to stdout, from every actor; once it is imported, they go to this process's log instead, each
    distinct warning once."""
    mujoco = sys.modules.get("mujoco")
    if mujoco is None or getattr(mujoco, "_rlsweep_handler", False):
        return
    seen: set[str] = set()

    def warn(message: str) -> None:
        kind = message.split(" Time =")[0]
        if kind not in seen:
            seen.add(kind)
            log.warning("MuJoCo: %s", message)

    mujoco.set_mju_user_warning(warn)
    mujoco._rlsweep_handler = True


def _made(cfg: EnvConfig, spec: EnvSpec, make: Any) -> Any:
    try:
        env = make()
    except (gym.error.DependencyNotInstalled, ModuleNotFoundError) as e:
        raise missing_package(cfg, spec, e) from None
    _mujoco_warnings_to_log()
    return env


def make_render_env(cfg: EnvConfig) -> Any:
    """One env that renders rgb_array frames (`engine.video`), with the experiment's kwargs and
    episode limit (`env.preset: atari`: one evaluation game, filmed as the agent sees it)."""
    spec = resolve_spec(cfg)
    if cfg.preset == "atari":
        from rlsweep import atari

        return atari.AgentView(atari.make(cfg, spec, 1, training=False))
    with warnings.catch_warnings():  # an env without the mode is told so by the caller, in one line
        warnings.filterwarnings("ignore", message=".*not in the possible render_modes")
        return _made(cfg, spec, lambda: gym.make(spec, render_mode="rgb_array", **cfg.kwargs))


def make_vector_env(cfg: EnvConfig, num_envs: int, training: bool = True) -> VectorEnv:
    """A vector env of `num_envs` copies in NEXT_STEP autoreset mode (not yet reset); `training` False
    for evaluation (a preset's training-only parts left out: see `EnvConfig.preset`)."""
    spec = resolve_spec(cfg)
    if cfg.preset == "atari":
        from rlsweep import atari

        return atari.make(cfg, spec, num_envs, training)
    mode = cfg.vectorization
    if mode == "auto":
        mode = "vector_entry_point" if spec.vector_entry_point is not None else "sync"
    kwargs = dict(cfg.kwargs)
    if mode == "vector_entry_point":
        if spec.vector_entry_point is None:
            raise ConfigError(f"key 'env.vectorization': {cfg.id!r} has no vectorised implementation; use sync")
        if cfg.max_episode_steps is not None:
            kwargs["max_episode_steps"] = cfg.max_episode_steps
        env = _made(cfg, spec, lambda: gym.make_vec(spec, num_envs=num_envs, vectorization_mode=mode, **kwargs))
    else:
        env = _made(cfg, spec, lambda: gym.make_vec(
            spec,
            num_envs=num_envs,
            vectorization_mode=mode,
            vector_kwargs={"autoreset_mode": AutoresetMode.NEXT_STEP},
            **kwargs,
        ))
    autoreset = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
    if autoreset != AutoresetMode.NEXT_STEP:
        env.close()
        raise ConfigError(f"env {cfg.id!r}: its vector env autoresets in {autoreset}, rlsweep needs NEXT_STEP")
    return env


def space_info(cfg: EnvConfig) -> SpaceInfo:
    """Build one sub-env to read its spaces; raises ConfigError for envs rlsweep cannot drive."""
    spec = resolve_spec(cfg)
    try:
        if cfg.preset == "atari":
            from rlsweep import atari

            env = atari.make(cfg, spec, 1, training=False)
        else:
            env = _made(cfg, spec, lambda: gym.make(spec, **cfg.kwargs))
    except ConfigError:
        raise
    except Exception as e:  # the env's own constructor failed: report it as bad input
        raise ConfigError(f"key 'env.kwargs': {cfg.id!r} cannot be created with kwargs {cfg.kwargs}: {e}") from None
    try:
        obs, act = (env.single_observation_space, env.single_action_space) if isinstance(env, VectorEnv) else \
            (env.observation_space, env.action_space)
    finally:
        env.close()
    if not isinstance(obs, gym.spaces.Box):
        raise ConfigError(f"key 'env.id': {cfg.id!r} has observation space {obs}; rlsweep needs a Box")
    observations = {"obs_dim": int(np.prod(obs.shape)), "obs_shape": tuple(int(n) for n in obs.shape),
                    "obs_dtype": np.dtype(obs.dtype).name}
    if isinstance(act, gym.spaces.Discrete):
        return SpaceInfo(discrete=True, act_dim=int(act.n), **observations)
    if isinstance(act, gym.spaces.Box) and len(act.shape) == 1:
        return SpaceInfo(
            discrete=False,
            act_dim=int(act.shape[0]),
            act_low=act.low.astype(np.float32),
            act_high=act.high.astype(np.float32),
            **observations,
        )
    raise ConfigError(f"key 'env.id': {cfg.id!r} has action space {act}, neither Discrete nor a 1-d Box")


# --------------------------------------------------------------------------------------------------
# Snapshots: an environment's plain-data attributes (numbers, strings, numpy arrays, RNG states),
# walked through wrappers and sub-envs. That is the whole state of the classic-control, toy-text and
# natively vectorised envs, so a restored trainable continues its episodes exactly. Envs whose state
# lives elsewhere (a physics engine, a subprocess) cannot be snapshotted: `env_state` returns None
# and their episodes restart after a restore.

_SCALARS = (bool, int, float, str, type(None))
# Simulators whose state lives in native objects: an env holding one of their objects cannot be
# snapshotted from its attributes (its episodes restart after a restore)
_OPAQUE = ("mujoco", "ale_py", "Box2D")


def encode_value(value: Any) -> Any:
    """A JSON-able form of plain data; TypeError for anything else."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, np.generic):
        return {"__np__": value.dtype.str, "v": value.item()}
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return {"__nd__": value.dtype.str, "shape": list(value.shape), "v": value.ravel().tolist()}
    if isinstance(value, np.random.Generator):
        return {"__rng__": value.bit_generator.state}
    if isinstance(value, (tuple, list)) and all(isinstance(v, _SCALARS) for v in value):
        return {"__seq__": type(value).__name__, "v": list(value)}
    raise TypeError


def decode_value(value: Any, current: Any = None) -> Any:
    """Inverse of `encode_value`; a ValueError for an encoding it does not know.

    An RNG state is set on `current` (the attribute's present value) when that is a numpy Generator,
    else on a new one.
    """
    if not isinstance(value, dict):
        return value
    if "__np__" in value:
        return np.dtype(value["__np__"]).type(value["v"])
    if "__nd__" in value:
        return np.asarray(value["v"], dtype=np.dtype(value["__nd__"])).reshape(value["shape"])
    if "__rng__" in value:
        rng = current if isinstance(current, np.random.Generator) else np.random.default_rng()
        rng.bit_generator.state = value["__rng__"]
        return rng
    if "__seq__" in value:
        return tuple(value["v"]) if value["__seq__"] == "tuple" else list(value["v"])
    raise ValueError(f"unknown encoded value {value!r}")


def _children(obj: Any) -> dict[str, Any]:
    kids = {}
    inner = obj.__dict__.get("env")
    if isinstance(inner, (gym.Env, VectorEnv)):
        kids["env"] = inner
    envs = obj.__dict__.get("envs")
    if isinstance(envs, (list, tuple)):
        kids.update({f"envs.{i}": e for i, e in enumerate(envs)})
    return kids


def env_state(env: Any) -> dict[str, Any] | None:
    """JSON-able snapshot of `env`, or None where its state is not plain data."""
    if isinstance(env, gym.vector.AsyncVectorEnv):
        return None
    own: dict[str, Any] = {}
    for name, value in vars(env).items():
        if name in ("env", "envs"):
            continue
        if type(value).__module__.split(".")[0] in _OPAQUE:
            return None
        try:
            own[name] = encode_value(value)
        except TypeError:
            continue
    children = {}
    for key, child in _children(env).items():
        state = env_state(child)
        if state is None:
            return None
        children[key] = state
    return {"attrs": own, "children": children}


def set_env_state(env: Any, state: dict[str, Any]) -> None:
    """Inverse of `env_state` on an env built from the same config."""
    for name, value in state["attrs"].items():
        setattr(env, name, decode_value(value, vars(env).get(name)))
    kids = _children(env)
    for key, child_state in state["children"].items():
        set_env_state(kids[key], child_state)
