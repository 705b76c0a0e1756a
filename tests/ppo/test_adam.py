"""FlatAdam computes what torch.optim.Adam computes, and carries on identically after a state round trip."""

import torch

from rlsweep.ppo.adam import FlatAdam


def _grads(n, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g) * (1 + i % 3) for i in range(steps)]


def test_matches_torch_adam():
    start = torch.randn(50, generator=torch.Generator().manual_seed(1))
    ours = start.clone()
    adam = FlatAdam(ours, eps=1e-5)
    ref = torch.nn.Parameter(start.clone())
    torch_adam = torch.optim.Adam([ref], lr=3e-3, eps=1e-5)
    for i, g in enumerate(_grads(50, 40)):
        lr = 3e-3 * (1 - i / 40)  # the learner sets the lr every update
        for group in torch_adam.param_groups:
            group["lr"] = lr
        ref.grad = g.clone()
        torch_adam.step()
        adam.step(g, lr)
    torch.testing.assert_close(ours, ref.detach(), rtol=1e-6, atol=1e-7)
    assert not torch.equal(ours, start)


def test_state_round_trip_continues_identically():
    grads = _grads(20, 30, seed=2)
    a_param = torch.zeros(20)
    a = FlatAdam(a_param, eps=1e-5)
    for g in grads[:10]:
        a.step(g, 1e-3)
    b_param = a_param.clone()
    b = FlatAdam(b_param, eps=1e-5)
    b.load_state_dict({k: v.clone() for k, v in a.state_dict().items()})
    for g in grads[10:]:
        a.step(g, 1e-3)
        b.step(g, 1e-3)
    assert torch.equal(a_param, b_param) and b.steps == 30
