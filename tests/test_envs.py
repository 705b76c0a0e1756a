"""Environment construction, NEXT_STEP autoreset, and exact plain-data snapshots."""

import gymnasium as gym
import numpy as np
import pytest

from rlsweep.config import ConfigError, EnvConfig
from rlsweep.envs import env_state, make_vector_env, set_env_state, space_info


def rollout(env, actions):
    out = []
    for a in actions:
        obs, r, term, trunc, _ = env.step(a)
        out.append((obs.copy(), r.copy(), term.copy(), trunc.copy()))
    return out


@pytest.mark.parametrize("cfg,n,act", [
    (EnvConfig(id="CartPole-v1"), 6, lambda rng, n: rng.integers(0, 2, n)),
    (EnvConfig(id="Pendulum-v1", max_episode_steps=7), 3, lambda rng, n: rng.uniform(-2, 2, (n, 1)).astype(np.float32)),
    (EnvConfig(id="CartPole-v1", vectorization="sync", max_episode_steps=9), 4, lambda rng, n: rng.integers(0, 2, n)),
], ids=["cartpole-native", "pendulum-sync", "cartpole-sync"])
def test_snapshot_restores_a_running_env_exactly(cfg, n, act):
    rng = np.random.default_rng(0)
    a = make_vector_env(cfg, n)
    a.reset(seed=3)
    rollout(a, [act(rng, n) for _ in range(25)])  # mid-episode for some, past an autoreset for others
    snap = env_state(a)
    future = [act(rng, n) for _ in range(40)]
    expected = rollout(a, future)

    b = make_vector_env(cfg, n)
    b.reset(seed=999)
    import json
    set_env_state(b, json.loads(json.dumps(snap)))  # the snapshot survives JSON
    got = rollout(b, future)
    for (o1, r1, t1, u1), (o2, r2, t2, u2) in zip(expected, got, strict=True):
        assert np.array_equal(o1, o2) and np.array_equal(r1, r2)
        assert np.array_equal(t1, t2) and np.array_equal(u1, u2)


def test_next_step_autoreset_returns_final_obs_then_a_dummy_step():
    env = make_vector_env(EnvConfig(id="Pendulum-v1", max_episode_steps=3, vectorization="sync"), 2)
    env.reset(seed=0)
    a = np.zeros((2, 1), np.float32)
    for _ in range(2):
        _, _, _, trunc, _ = env.step(a)
        assert not trunc.any()
    _, _, _, trunc, _ = env.step(a)
    assert trunc.all()
    _, r, term, trunc, _ = env.step(a)  # the autoreset step
    assert (r == 0).all() and not term.any() and not trunc.any()


def test_class_entry_point_with_kwargs():
    cfg = EnvConfig(id="gymnasium.envs.classic_control.pendulum:PendulumEnv", kwargs={"g": 9.0},
                    max_episode_steps=5)
    info = space_info(cfg)
    assert not info.discrete and info.act_dim == 1 and info.obs_dim == 3
    env = make_vector_env(cfg, 2)
    env.reset(seed=0)
    assert env.envs[0].unwrapped.g == 9.0
    for _ in range(4):
        env.step(np.zeros((2, 1), np.float32))
    _, _, _, trunc, _ = env.step(np.zeros((2, 1), np.float32))
    assert trunc.all()


@pytest.mark.parametrize("env_id,fragment", [
    ("NoSuchEnv-v0", "not a registered gymnasium environment"),
    ("no_such_module:Env", "cannot import module"),
    ("gymnasium:NoSuchClass", "has no class or registered env"),
    ("FrozenLake-v1", "observation space"),
])
def test_unusable_envs_are_config_errors(env_id, fragment):
    with pytest.raises(ConfigError, match=fragment):
        space_info(EnvConfig(id=env_id))


def test_bad_kwargs_are_config_errors():
    with pytest.raises(ConfigError, match="env.kwargs"):
        space_info(EnvConfig(id="CartPole-v1", kwargs={"no_such_arg": 1}))


def test_async_envs_report_no_snapshot():
    env = make_vector_env(EnvConfig(id="CartPole-v1", vectorization="async"), 2)
    try:
        env.reset(seed=0)
        assert isinstance(env, gym.vector.AsyncVectorEnv) and env_state(env) is None
    finally:
        env.close()


@pytest.mark.parametrize("source, fragment", [
    ("def broken(:\n", "(SyntaxError: invalid syntax (broken_env_"),
    ("raise RuntimeError('no licence server')\n", "(RuntimeError: no licence server)"),
    ("import no_such_package_anywhere\n", "(ModuleNotFoundError: No module named 'no_such_package_anywhere')"),
])
def test_an_env_module_that_fails_to_import_is_one_line(tmp_path, monkeypatch, source, fragment):
    import uuid

    from rlsweep.config import ConfigError, EnvConfig
    from rlsweep.envs import resolve_spec

    name = f"broken_env_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as e:
        resolve_spec(EnvConfig(id=f"{name}:Env"))
    assert "\n" not in str(e.value) and f"cannot import module '{name}'" in str(e.value) and fragment in str(e.value)


def test_an_env_id_naming_a_class_that_is_not_an_env_is_refused_before_it_is_called(tmp_path):
    """A config (a downloaded checkpoint's, say) naming `module:Class` gets that class called with its
    kwargs only when it is a gymnasium.Env: `subprocess:Popen` would run a command."""
    from rlsweep.envs import resolve_spec

    marker = tmp_path / "ran"
    cfg = EnvConfig(id="subprocess:Popen", kwargs={"args": f"touch {marker}", "shell": True})
    for call in (resolve_spec, space_info):
        with pytest.raises(ConfigError, match="'subprocess:Popen' is a class but not a gymnasium.Env"):
            call(cfg)
    assert not marker.exists()
