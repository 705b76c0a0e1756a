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
    shares tile it, and their weights sum to one (so the summed gradients are the minibatch's)."""
    from rlsweep.config import PolicyConfig, PPOConfig
    from rlsweep.engine.data_parallel import DataParallelLearner
    from rlsweep.envs import SpaceInfo

    ranks = [DataParallelLearner(SpaceInfo(obs_dim=4, discrete=True, act_dim=2), PolicyConfig(), PPOConfig(), 0,
                                 rank=r, world=world) for r in range(world)]
    for size in (0, 1, 2, 5, 64):
        shares = [learner._share(size) for learner in ranks]
        assert [a for a, _, _ in shares] == [0] + [b for _, b, _ in shares[:-1]] and shares[-1][1] == size
        assert sum(w for a, b, w in shares if b > a) == pytest.approx(1.0 if size else 0.0)
