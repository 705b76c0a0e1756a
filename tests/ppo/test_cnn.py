"""The convolutional policy: the workers' numpy forward equals the learner's torch network, agents
stacked in one network are each the network a one-agent trainer builds, and images are read in
either channel order."""

import numpy as np
import pytest
import torch

from rlsweep.config import ConfigError, PolicyConfig
from rlsweep.envs import SpaceInfo
from rlsweep.ppo import encoders, networks
from rlsweep.ppo.policy import NumpyPolicy, one_agent

FRAMES = SpaceInfo(obs_dim=4 * 44 * 40, discrete=True, act_dim=6, obs_shape=(4, 44, 40), obs_dtype="uint8")
CAMERA = SpaceInfo(obs_dim=48 * 48 * 3, discrete=False, act_dim=2, act_low=-np.ones(2, np.float32),
                   act_high=np.ones(2, np.float32), obs_shape=(48, 48, 3), obs_dtype="uint8")


def _images(space, k, n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(k, n, *space.obs_shape), dtype=np.uint8)


@pytest.mark.parametrize("shared", [True, False], ids=["shared-trunk", "separate-trunks"])
@pytest.mark.parametrize("space", [FRAMES, CAMERA], ids=["chw-discrete", "hwc-box"])
@pytest.mark.parametrize("seeds", [[0], [3, 1]], ids=["one-agent", "two-agents"])
def test_numpy_forward_matches_torch(space, shared, seeds):
    cfg = PolicyConfig(shared_trunk=shared, cnn_dense=32, log_std_init=-0.5)
    net = networks.make(space, cfg, seeds)
    assert isinstance(net, networks.ConvActorCritic)
    with torch.no_grad():  # heads far from uniform, so a wrong feature would show
        net.pi_w.normal_()
        net.v_w.normal_()
    pol = NumpyPolicy(space, cfg)
    pol.load(net.export_weights())
    k = len(seeds)
    obs = _images(space, k, 5)
    assert pol.prepare(obs) is obs  # pixels stay uint8 up to the network
    actions, logp, values = pol.act(obs, [np.random.default_rng(i) for i in range(k)])
    t_logp, _, t_values = net.evaluate(torch.as_tensor(obs), torch.as_tensor(actions))
    np.testing.assert_allclose(logp, t_logp.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(values, t_values.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(pol.value(obs), net.value(torch.as_tensor(obs)).detach().numpy(), rtol=1e-4, atol=1e-4)
    greedy = pol.greedy(obs)
    assert greedy.shape == ((k, 5) if space.discrete else (k, 5, 2))


def test_one_agents_weights_cut_from_separate_trunks_act_as_that_agent():
    cfg = PolicyConfig(cnn_dense=16, shared_trunk=False)
    net = networks.make(FRAMES, cfg, [5, 6])
    both, alone = NumpyPolicy(FRAMES, cfg), NumpyPolicy(FRAMES, cfg)
    both.load(net.export_weights())
    alone.load(one_agent(net.export_weights(), 1))
    obs = _images(FRAMES, 2, 3)
    np.testing.assert_array_equal(alone.value(obs[1:]), both.value(obs)[1:])
    np.testing.assert_array_equal(alone.greedy(obs[1:]), both.greedy(obs)[1:])


def test_stacked_agents_are_each_a_one_agent_network():
    cfg = PolicyConfig(cnn_dense=16, shared_trunk=False)
    stacked = networks.make(FRAMES, cfg, [5, 6])
    obs = torch.as_tensor(_images(FRAMES, 2, 3))
    actions = torch.zeros(2, 3, dtype=torch.int64)
    both = stacked.evaluate(obs, actions)
    for k, seed in enumerate([5, 6]):
        alone = networks.make(FRAMES, cfg, [seed]).evaluate(obs[k : k + 1], actions[k : k + 1])
        for a, b in zip(alone, both, strict=True):
            torch.testing.assert_close(a[0], b[k])


def test_pixels_are_scaled_in_the_network_not_by_the_normaliser():
    enc = encoders.choose(FRAMES, PolicyConfig())
    assert (enc.kind, enc.scale, enc.channels_last, enc.image) == ("cnn", 1 / 255, False, (4, 44, 40))
    assert encoders.choose(CAMERA, PolicyConfig()).channels_last
    with pytest.raises(ConfigError, match="policy.normalize_observations"):
        encoders.choose(FRAMES, PolicyConfig(normalize_observations=True))
    flat = SpaceInfo(obs_dim=4, discrete=True, act_dim=2, obs_shape=(4,))
    assert encoders.choose(flat, PolicyConfig()).kind == "mlp"
    with pytest.raises(ConfigError, match="policy.encoder.*shape"):
        encoders.choose(flat, PolicyConfig(encoder="cnn"))
    small = SpaceInfo(obs_dim=3 * 30 * 30, discrete=True, act_dim=2, obs_shape=(30, 30, 3), obs_dtype="uint8")
    assert encoders.choose(small, PolicyConfig()).kind == "mlp"  # auto: an image the trunk cannot read
    with pytest.raises(ConfigError, match="at least 36 x 36"):
        encoders.choose(small, PolicyConfig(encoder="cnn"))


def test_k_cnn_agents_update_as_k_one_agent_learners():
    """Two agents' stacked convolutional network (grouped convolutions, weights laid out channels last
    in the flat parameters) is updated exactly as two one-agent learners on their seeds."""
    from rlsweep.config import PPOConfig
    from rlsweep.ppo.batch import TrainBatch
    from rlsweep.ppo.learner import Learner

    ppo = PPOConfig(train_batch_size=64, minibatch_size=16, num_epochs=2, clip=0.1, vf_clip=0.1, ent_coef=0.01)
    policy = PolicyConfig(cnn_dense=32, shared_trunk=False)
    seeds, n = [3, 4], 48
    many = Learner(FRAMES, policy, ppo, seeds)
    ones = [Learner(FRAMES, policy, ppo, [seed]) for seed in seeds]
    start = [one.flat.clone() for one in ones]
    rng = np.random.default_rng(0)
    for _ in range(2):
        obs = _images(FRAMES, 2, n, seed=int(rng.integers(1 << 30)))
        actions = rng.integers(0, FRAMES.act_dim, (2, n))
        with torch.no_grad():
            logp, _, values = many.net.evaluate(torch.as_tensor(obs), torch.as_tensor(actions))
        adv = rng.normal(size=(2, n)).astype(np.float32)
        batch = TrainBatch(obs, actions, logp.numpy(), values.numpy(), adv, values.numpy() + adv, np.array([n, n]))
        got = many.update(batch, lr=1e-3)
        for k, one in enumerate(ones):
            part = TrainBatch(*(x[k : k + 1] for x in batch[:6]), np.array([n]))
            want = one.update(part, lr=1e-3)
            np.testing.assert_allclose([got[key][k] for key in want], [want[key][0] for key in want], rtol=1e-3,
                                       atol=1e-4)
            # grouped and plain convolutions sum in different orders, and Adam magnifies that float noise
            # where a gradient is near 0: agent k's parameters are within 1% of how far its updates moved
            # them (agents mixed up, or one agent's step taken on another's batch, would be ~100%)
            moved = torch.linalg.vector_norm(one.flat - start[k])
            assert torch.linalg.vector_norm(many.flat[many.agent_of == k] - one.flat) < 0.01 * moved
    # the parameters are views of the flat tensor: an update moved them, and the network reads them
    assert not torch.equal(many.flat, Learner(FRAMES, policy, ppo, seeds).flat)
    assert all(p.untyped_storage().data_ptr() == many.flat.untyped_storage().data_ptr() for p in many.net.parameters())
    assert many.net.conv_w[0].is_contiguous(memory_format=torch.channels_last)
