"""PPO updates on learner actors: real Ray actors, a real torch.distributed (gloo) group. (Exact
restore through checkpoints with learner actors: tests/tuning/test_trainable.py.)"""

import io

import pytest
import torch

from rlsweep.config import validate
from rlsweep.engine.learners import LearnerGroup
from rlsweep.engine.training import Training
from rlsweep.engine.workers import LocalWorkers
from tests.conftest import small_config


def training(num_learners, **sections):
    cfg = validate(small_config(workers=0, learners={"num_learners": num_learners, "cpus_per_learner": 0.5},
                                **sections))
    return Training(cfg, LocalWorkers(cfg), LearnerGroup(cfg) if num_learners else None)


def model(state: bytes) -> dict[str, torch.Tensor]:
    return torch.load(io.BytesIO(state), weights_only=True)["model"]


@pytest.mark.parametrize("sections", [{}, {"ppo": {"ent_coef": 0.01, "num_epochs": 3, "minibatch_size": 16}}])
def test_two_learners_on_one_batch_update_as_one_learner(ray_local, sections):
    one, two = training(0, **sections), training(2, **sections)
    start = model(one.learner.state_bytes())
    # the same batch (the same initial weights sample it); its valid steps (62 of 64 here: autoreset
    # steps are dropped) split unevenly between the two learners
    a, b = one.iterate(), two.iterate()
    pids = two.learner.pids
    ranks = [model(s) for s in two.learner._all("state_bytes")]
    one.close(), two.close()
    assert len(set(pids)) == 2  # two processes
    reference = model(one.learner.state_bytes())
    one_step = torch.cat([(reference[k] - start[k]).flatten() for k in start])
    two_step = torch.cat([(ranks[0][k] - start[k]).flatten() for k in start])
    assert one_step.norm() > 1e-3  # a real update
    assert (two_step - one_step).norm() / one_step.norm() < 1e-5  # the same one, up to float rounding
    for name in reference:
        assert torch.equal(ranks[0][name], ranks[1][name]), name  # the ranks stay in step
    for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "grad_norm"):
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key


def test_one_learner_actor_trains_in_its_own_process(ray_local):
    import os

    t = training(1)
    r = t.iterate()
    assert t.learner.pids[0] != os.getpid() and r["env_steps"] == 64
    before = model(t.learner.state_bytes())
    t.iterate()
    after = model(t.learner.state_bytes())
    t.close()
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("world", [2, 3])
def test_the_ranks_shares_partition_every_minibatch_and_weigh_it_whole(world):
    """Each rank's share of a minibatch of any size, empty and smaller than the group included: the
    shares tile it; and since each sample carries its weight in the whole minibatch's means, the
    shares' losses and gradients sum to the whole minibatch's (agents' minibatches of different sizes,
    padded, included)."""
    from rlsweep.config import PolicyConfig, PPOConfig
    from rlsweep.engine.data_parallel import DataParallelLearner
    from rlsweep.envs import SpaceInfo
    from rlsweep.ppo.losses import ppo_loss

    space, policy, ppo = SpaceInfo(obs_dim=4, discrete=True, act_dim=2), PolicyConfig(hidden_sizes=[8]), PPOConfig()
    ranks = [DataParallelLearner(space, policy, ppo, [0, 1], rank=r, world=world) for r in range(world)]
    whole = DataParallelLearner(space, policy, ppo, [0, 1])  # a group of one: the one learner
    for learner in ranks:
        assert torch.equal(learner.flat, whole.flat)  # the ranks start alike
    for size in (0, 1, 2, 5, 64):
        shares = [learner._share(size) for learner in ranks]
        assert [a for a, _ in shares] == [0] + [b for _, b in shares[:-1]] and shares[-1][1] == size
        assert whole._share(size) == (0, size)

    def loss_and_grad(learner, mb, a, b):
        learner.grad.zero_()
        if b <= a:  # an empty share: no loss, no gradient
            return 0.0, learner.grad.clone()
        obs, act, logp, val, adv, ret, w = mb
        new_logp, entropy, values = learner.net.evaluate(obs[:, a:b], act[:, a:b])
        terms = ppo_loss(new_logp, logp[:, a:b], adv[:, a:b], values, val[:, a:b], ret[:, a:b], entropy, w[:, a:b],
                         clip=0.2, vf_clip=0.3, vf_coef=0.5, ent_coef=0.01)
        terms.loss.backward()
        return terms.loss.item(), learner.grad.clone()

    g = torch.Generator().manual_seed(world)
    for counts in ([5, 3], [2, 1], [64, 61]):  # agent 1's minibatch is the shorter: padded slots weigh 0
        slots = max(counts)
        w = (torch.arange(slots) < torch.tensor(counts).unsqueeze(-1)).float() / torch.tensor(counts).unsqueeze(-1)
        mb = (torch.randn(2, slots, 4, generator=g), torch.randint(0, 2, (2, slots), generator=g),
              -torch.rand(2, slots, generator=g), torch.randn(2, slots, generator=g),
              torch.randn(2, slots, generator=g), torch.randn(2, slots, generator=g), w)
        want_loss, want_grad = loss_and_grad(whole, mb, 0, slots)
        parts = [loss_and_grad(learner, mb, *learner._share(slots)) for learner in ranks]
        assert sum(p[0] for p in parts) == pytest.approx(want_loss, rel=1e-5, abs=1e-6), counts
        torch.testing.assert_close(sum(p[1] for p in parts), want_grad, rtol=1e-5, atol=1e-6)
        assert want_grad.norm() > 0
