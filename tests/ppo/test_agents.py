"""K agents (one per seed) trained as one stacked network are K one-seed runs: the learner's update,
whole trainings on real envs, checkpoints of K agents, and checkpoints from before the agent axis."""

import json
import math

import numpy as np
import pytest
import torch

from rlsweep import metrics as M
from rlsweep.config import ConfigError, PolicyConfig, PPOConfig, validate
from rlsweep.engine.training import Training
from rlsweep.engine.workers import LocalWorkers
from rlsweep.envs import SpaceInfo
from rlsweep.ppo import checkpoint
from rlsweep.ppo.batch import TrainBatch
from rlsweep.ppo.learner import Learner
from rlsweep.ppo.networks import ActorCritic, upgrade_state_dict
from tests.conftest import ROOT, small_config

DISCRETE = SpaceInfo(obs_dim=4, discrete=True, act_dim=3)
BOX = SpaceInfo(obs_dim=3, discrete=False, act_dim=2, act_low=-np.ones(2, np.float32), act_high=np.ones(2, np.float32))
SEEDS = [5, 6, 7]
COUNTS = [250, 256, 240]  # the agents' valid samples differ (autoreset steps are dropped per agent)
TIMINGS = {M.TIME_SAMPLE_S, M.TIME_LEARN_S, M.TIME_EVAL_S, M.TIME_OTHER_S, M.ENV_STEPS_PER_S}
OLD_CHECKPOINT = ROOT / "tests" / "data" / "pre_agent_axis"  # see its README.md


def agent_params(net: ActorCritic, k: int) -> list[torch.Tensor]:
    """Agent k's parameters in a stacked network, in the one-agent network's shapes and order."""
    out = []
    for name, p in net.named_parameters():
        rows = 2 if name.startswith("hidden_") else 1  # hidden layers: actor and critic per agent
        out.append(p.detach()[rows * k : rows * (k + 1)])
    return out


def agent_flat(learner: Learner, k: int) -> torch.Tensor:
    """Agent k's slice of the learner's flat parameters: the one-agent learner's flat layout."""
    return learner.flat[learner.agent_of == k]


def one_agent_batch(space: SpaceInfo, learner: Learner, n: int, rng: np.random.Generator) -> TrainBatch:
    """n random samples for a one-agent learner, with log-probs and values of its current network."""
    obs = rng.normal(size=(1, n, space.obs_dim)).astype(np.float32)
    if space.discrete:
        actions = rng.integers(0, space.act_dim, (1, n))
    else:
        actions = rng.normal(size=(1, n, space.act_dim)).astype(np.float32)
    with torch.no_grad():
        logp, _, values = learner.net.evaluate(torch.as_tensor(obs), torch.as_tensor(actions))
    advantages = rng.normal(size=(1, n)).astype(np.float32)
    returns = (values.numpy() + advantages + rng.normal(size=(1, n))).astype(np.float32)
    return TrainBatch(obs, actions, logp.numpy(), values.numpy(), advantages, returns, np.array([n]))


def stacked(parts: list[TrainBatch], rng: np.random.Generator) -> TrainBatch:
    """The agents' batches as one (K, n, ...) batch, padded to the longest with junk (which must weigh
    nothing: the learner reads only each agent's first counts[k] samples)."""
    counts = np.array([int(p.counts[0]) for p in parts])
    n = int(counts.max())
    columns = []
    for j in range(6):
        first = parts[0][j]
        junk = rng.normal(0, 5, (len(parts), n, *first.shape[2:]))
        if first.dtype.kind == "i":
            junk = rng.integers(0, 3, junk.shape)  # (discrete actions: valid ones)
        out = junk.astype(first.dtype)
        for k, p in enumerate(parts):
            out[k, : counts[k]] = p[j][0]
        columns.append(out)
    return TrainBatch(*columns, counts)


@pytest.mark.parametrize("stop_early", [False, True], ids=["all-epochs", "target-kl"])
@pytest.mark.parametrize("space", [DISCRETE, BOX], ids=["discrete", "box"])
def test_k_agents_update_as_k_one_agent_learners(space, stop_early):
    """Agent k of a K-agent learner starts as, and after every update equals, the one-agent learner on
    seeds[k] fed agent k's batch: its own shuffles, advantage normalisation, gradient clipping, Adam
    state and (with target_kl) its own number of epochs, and what an agent stopped early leaves to its
    next update (its shuffling RNG and Adam step count, untouched while it sits out)."""
    # target_kl values at which, on these batches, the agents stop at different epochs from the first
    # update on (asserted below)
    target_kl = (0.002 if space.discrete else 0.0045) if stop_early else None
    ppo = PPOConfig(train_batch_size=256, minibatch_size=64, num_epochs=4, target_kl=target_kl, ent_coef=0.01,
                    vf_clip=0.2)
    policy = PolicyConfig(hidden_sizes=[16, 16], log_std_init=-0.5)
    many = Learner(space, policy, ppo, SEEDS)
    ones = [Learner(space, policy, ppo, [seed]) for seed in SEEDS]
    for k, one in enumerate(ones):
        for p, q in zip(agent_params(many.net, k), one.net.parameters(), strict=True):
            assert torch.equal(p, q)  # exactly the same initialisation, agent by agent
        assert torch.equal(agent_flat(many, k), one.flat)
    rng = np.random.default_rng(0)
    epochs_seen = []
    for update in range(3):
        parts = [one_agent_batch(space, one, n, rng) for one, n in zip(ones, COUNTS, strict=True)]
        got = many.update(stacked(parts, rng), lr=3e-3)
        want = [one.update(part, lr=3e-3) for one, part in zip(ones, parts, strict=True)]
        assert got.keys() == want[0].keys()
        for key, values in got.items():
            assert len(values) == 3, key
            np.testing.assert_allclose(values, [w[key][0] for w in want], rtol=1e-4, atol=1e-5,
                                       err_msg=f"{key}, update {update}")
        for k, one in enumerate(ones):
            for p, q in zip(agent_params(many.net, k), one.net.parameters(), strict=True):
                np.testing.assert_allclose(p.numpy(), q.detach().numpy(), rtol=1e-4, atol=1e-5,
                                           err_msg=f"agent {k}, update {update}")
        epochs_seen.append(got[M.UPDATE_EPOCHS])
    assert many.finite() == [True, True, True]
    if target_kl is None:
        assert all(e == [4, 4, 4] for e in epochs_seen)
    else:  # the agents stopped at different epochs before the last update, and each went on as if alone
        assert any(len(set(e)) > 1 for e in epochs_seen[:2]), epochs_seen


def training(env_id="CartPole-v1", seed=3, agents=1, **sections):
    sweep = {"seeds_per_trial": agents}
    cfg = validate(small_config(env_id=env_id, workers=0, seed=seed, sweep=sweep, **sections))
    return Training(cfg, LocalWorkers(cfg))


def same(a: float, b: float, rel: float = 0.0, abs: float = 0.0) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=rel, abs=abs)


ENVS = {
    "cartpole": ("CartPole-v1", {}),
    # target_kl stops the agents' epochs at different times (checked in the learner's test)
    "cartpole-target-kl": ("CartPole-v1", {"ppo": {"num_epochs": 4, "target_kl": 0.0001}}),
    # 256 steps per env and iteration: Pendulum's 200-step episodes end within each
    "pendulum": ("Pendulum-v1", {"env": {"vectorization": "sync"}, "policy": {"normalize_observations": True},
                                 "ppo": {"train_batch_size": 1024, "minibatch_size": 256}}),
}


@pytest.mark.parametrize("env", ENVS)
def test_a_k_agent_training_is_k_one_seed_trainings(env):
    """One training of 3 agents on seeds s, s+1, s+2 reports, per seed, what three one-seed trainings
    report, and trains the same networks (float rounding aside: the batched matmuls sum alike but not
    always bit for bit); its headline metrics are the IQM (the mean, for 3) and the mean of the rest."""
    env_id, sections = ENVS[env]
    sections = {**sections, "evaluation": {"interval": 1, "episodes": 3}}
    seeds = [11, 12, 13]
    many = training(env_id, seeds[0], 3, **sections)
    ones = [training(env_id, seed, 1, **sections) for seed in seeds]
    try:
        for _ in range(3):
            got = many.iterate()
            want = [one.iterate() for one in ones]
            for seed, w in zip(seeds, want, strict=True):
                for key in (M.EVAL_RETURN_MEAN, M.EPISODE_RETURN_MEAN):
                    assert same(got[M.per_seed(key, seed)], w[key], rel=1e-6), (key, seed)
            assert not math.isnan(got[M.EVAL_RETURN_MEAN])
            for key in (M.EVAL_RETURN_MEAN, M.EPISODE_RETURN_MEAN):  # below 4 seeds the IQM is the mean
                values = [got[M.per_seed(key, seed)] for seed in seeds]
                assert same(got[key], sum(values) / 3, rel=1e-12)
                if not math.isnan(got[key]):
                    assert got[key + "_min"] == min(values) and got[key + "_max"] == max(values)
                    assert got[key + "_ci_low"] <= got[key] <= got[key + "_ci_high"]
            for key in (M.POLICY_LOSS, M.VALUE_LOSS, M.EVAL_LENGTH_MEAN):  # the rest: the agents' mean
                assert got[key] == pytest.approx(sum(w[key] for w in want) / 3, rel=1e-4, abs=1e-6), key
            assert got[M.ENV_STEPS] == want[0][M.ENV_STEPS]  # per agent
            assert got[M.EPISODES] == sum(w[M.EPISODES] for w in want)  # all agents'
        assert not math.isnan(got[M.EPISODE_RETURN_MEAN])
        for k, one in enumerate(ones):
            torch.testing.assert_close(agent_flat(many.learner, k), one.learner.flat, rtol=1e-4, atol=1e-5)
            if one.obs_stats is not None:
                np.testing.assert_allclose(many.obs_stats[k].mean, one.obs_stats[0].mean, rtol=1e-5, atol=1e-7)
                np.testing.assert_allclose(many.obs_stats[k].var, one.obs_stats[0].var, rtol=1e-5)
    finally:
        many.close()
        for one in ones:
            one.close()


def assert_same_results(a: dict, b: dict) -> None:
    """Equal, key for key, but for the timings (the time to the target too: until an agent reaches
    it, it is the wall-clock time spent so far)."""
    assert a.keys() == b.keys()
    for key in a.keys() - TIMINGS:
        if not key.startswith(M.TIME_TO_TARGET_S):
            assert same(a[key], b[key]), key


def test_a_k_agent_checkpoint_restores_bit_exactly(tmp_path):
    """A 3-agent training saved after 2 iterations and restored from the checkpoint's files goes on
    exactly as the saved one: every metric (timings aside) and every parameter, bit for bit."""
    sections = dict(agents=3, policy={"normalize_observations": True},
                    ppo={"num_epochs": 4, "target_kl": 0.0001}, stop={"target_return": 30.0, "env_steps": 1000},
                    evaluation={"interval": 1, "episodes": 3})
    a = training(**sections)
    a.iterate(), a.iterate()
    learner_state, state = a.state()
    assert state["seeds"] == [3, 4, 5] and len(state["learner_rng"]) == 3 and len(state["obs_stats"]) == 3
    checkpoint.write(tmp_path / "c", learner_state, state)
    b = training(**sections)
    try:
        assert b.load_state(*checkpoint.read(tmp_path / "c")) is None  # the envs restored: exact
        for _ in range(2):
            assert_same_results(a.iterate(), b.iterate())
        assert torch.equal(a.learner.flat, b.learner.flat)
        assert torch.equal(a.learner.adam.exp_avg_sq, b.learner.adam.exp_avg_sq)
        assert (a.learner.adam.steps == b.learner.adam.steps).all()
        assert [r and r[M.ENV_STEPS_TO_TARGET] for r in a.reached] == [r and r[M.ENV_STEPS_TO_TARGET] for r in b.reached]
        assert a.learner.rng_state() == b.learner.rng_state()
        for x, y in zip(a.obs_stats, b.obs_stats, strict=True):
            assert (x.mean == y.mean).all() and x.count == y.count
    finally:
        a.close()
        b.close()
    # the checkpoint's policies, for acting without a learner: three agents
    _, weights, stats = checkpoint.load_policy(tmp_path / "c")
    assert weights["actor"][0].shape[0] == 3 and len(stats) == 3
    # and an experiment of another number of agents is told so
    one = training(policy={"normalize_observations": True})
    with pytest.raises(ConfigError, match="3 agent.*seeds_per_trial"):
        one.load_state(learner_state, state)
    one.close()


# -- checkpoints from before the agent axis ---------------------------------------------------------


def old_forward(old: dict[str, torch.Tensor], space: SpaceInfo, obs: torch.Tensor, actions: torch.Tensor):
    """(log-prob, value) as the network before the agent axis computed them: the hidden layers of actor
    (0) and critic (1) stacked as (2, fan_in, fan_out), the heads nn.Linear, log_std (act_dim,)."""
    x = obs.expand(2, *obs.shape)
    layer = 0
    while f"hidden_w.{layer}" in old:
        x = torch.tanh(torch.baddbmm(old[f"hidden_b.{layer}"], x, old[f"hidden_w.{layer}"]))
        layer += 1
    out = x[0] @ old["pi_head.weight"].T + old["pi_head.bias"]
    value = (x[1] @ old["v_head.weight"].T + old["v_head.bias"]).squeeze(-1)
    if space.discrete:
        logp = torch.log_softmax(out, -1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    else:
        std = old["log_std"].exp()
        logp = (-0.5 * ((actions - out) / std) ** 2 - old["log_std"] - 0.5 * math.log(2 * math.pi)).sum(-1)
    return logp, value


def old_layout(space: SpaceInfo, hidden: list[int], seed: int) -> dict[str, torch.Tensor]:
    """A random network state in the layout before the agent axis (and its order: log_std first)."""
    g = torch.Generator().manual_seed(seed)
    sizes = [space.obs_dim, *hidden]
    old = {} if space.discrete else {"log_std": torch.randn(space.act_dim, generator=g) * 0.3}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        old[f"hidden_w.{i}"] = torch.randn(2, fan_in, fan_out, generator=g) / fan_in**0.5
    for i, fan_out in enumerate(sizes[1:]):
        old[f"hidden_b.{i}"] = torch.randn(2, 1, fan_out, generator=g) * 0.1
    old["pi_head.weight"] = torch.randn(space.act_dim, sizes[-1], generator=g)
    old["pi_head.bias"] = torch.randn(space.act_dim, generator=g)
    old["v_head.weight"] = torch.randn(1, sizes[-1], generator=g)
    old["v_head.bias"] = torch.randn(1, generator=g)
    return old


@pytest.mark.parametrize("space", [DISCRETE, BOX], ids=["discrete", "box"])
def test_an_old_network_state_upgrades_to_the_same_network(space):
    old = old_layout(space, [16, 8], seed=1)
    net = ActorCritic(space, PolicyConfig(hidden_sizes=[16, 8]), [0])
    net.load_state_dict(upgrade_state_dict(old))  # strict: every key, every shape
    g = torch.Generator().manual_seed(2)
    obs = torch.randn(50, space.obs_dim, generator=g)
    actions = torch.randint(0, space.act_dim, (50,), generator=g) if space.discrete \
        else torch.randn(50, space.act_dim, generator=g)
    want_logp, want_value = old_forward(old, space, obs, actions)
    with torch.no_grad():
        logp, _, value = net.evaluate(obs.unsqueeze(0), actions.unsqueeze(0))
    torch.testing.assert_close(logp[0], want_logp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(value[0], want_value, rtol=1e-5, atol=1e-5)
    today = net.state_dict()
    assert upgrade_state_dict(today) is today  # today's layout passes as it is


@pytest.mark.parametrize("space", [DISCRETE, BOX], ids=["discrete", "box"])
def test_old_flat_optimiser_moments_land_on_their_parameters(space):
    """The Adam moments of an old checkpoint are one flat tensor in the old network's parameter order
    and shapes; loaded, each moment must sit at its parameter's place in today's layout. (Here the
    'moments' are the old parameters themselves, flattened: upgraded, they are today's flat parameters.)"""
    old = old_layout(space, [16, 8], seed=3)
    learner = Learner(space, PolicyConfig(hidden_sizes=[16, 8]), PPOConfig(), [0])
    learner.net.load_state_dict(upgrade_state_dict(old))
    old_flat = torch.cat([v.reshape(-1) for v in old.values()])
    assert not torch.equal(old_flat, learner.flat)  # the layouts do differ
    assert torch.equal(learner._upgrade_flat(old, old_flat), learner.flat)


def test_a_checkpoint_from_before_the_agent_axis_continues_as_it_did():
    """A real checkpoint of the code before the agent axis restores exactly (the envs and RNGs go on)
    and the training continues as that code's uninterrupted run did: its metrics and network."""
    expected = json.loads((OLD_CHECKPOINT / "continuation.json").read_text())
    t = training(policy={"normalize_observations": True}, stop={"target_return": 5.0, "env_steps": 1000})
    try:
        assert t.load_state(*checkpoint.read(OLD_CHECKPOINT)) is None
        assert t.reached[0] is not None and t.env_steps == 128
        for want in expected["metrics"]:
            got = t.iterate()
            assert set(got) - TIMINGS == set(want) | {M.SEEDS_AT_TARGET}
            for key, value in want.items():
                assert same(got[key], value, rel=1e-5, abs=1e-7), key
        model = upgrade_state_dict({key: torch.tensor(v) for key, v in expected["model"].items()})
        for key, value in t.learner.net.state_dict().items():
            torch.testing.assert_close(value, model[key], rtol=1e-5, atol=1e-6)
    finally:
        t.close()
    _, weights, stats = checkpoint.load_policy(OLD_CHECKPOINT)
    assert weights["actor"][-2].shape == (1, 16, 2) and weights["actor"][-1].shape == (1, 1, 2) and len(stats) == 1
