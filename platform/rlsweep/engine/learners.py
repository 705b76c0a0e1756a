"""PPO updates on learner actors: `learners.num_learners` Ray actors in the trial's placement group.

`LearnerGroup` stands in for `ppo.Learner` inside `training.Training` (same methods), so the PPO
spine does not change. With one learner the update simply runs in another process (on a GPU when
`learners.gpus_per_learner` asks for one); with N > 1 the actors form a torch.distributed group
(gloo on CPUs, NCCL on GPUs) and split every minibatch between them (see `ppo.Learner`). Every
actor receives the whole batch (one object in Ray's store per node); rank 0 answers for the group.
"""

from __future__ import annotations

import socket
from typing import Any

import ray

from rlsweep.config import ExperimentConfig
from rlsweep.engine.workers import in_trial_group, node_ids
from rlsweep.envs import space_info
from rlsweep.ppo.policy import Weights


class LearnerActor:
    """One rank: a `ppo.Learner` in its own process."""

    def __init__(self, cfg: ExperimentConfig, rank: int, world: int):
        import torch

        self.cfg, self.rank, self.world = cfg, rank, world
        torch.set_num_threads(cfg.resources.torch_threads)
        self.device = "cuda" if cfg.learners.gpus_per_learner > 0 else "cpu"
        self.learner: Any = None

    def address(self) -> tuple[str, int]:
        """Where rank 0 listens for the group: this node's IP and a free port."""
        with socket.socket() as s:
            s.bind(("", 0))
            return ray.util.get_node_ip_address(), s.getsockname()[1]

    def start(self, master: tuple[str, int] | None) -> int:
        """Joins the group (when there is one) and builds the learner; returns this actor's pid."""
        import os

        import torch

        if self.world > 1:
            host, port = master
            torch.distributed.init_process_group("nccl" if self.device == "cuda" else "gloo",
                                                 init_method=f"tcp://{host}:{port}", rank=self.rank,
                                                 world_size=self.world)
        cfg = self.cfg
        from rlsweep.engine.data_parallel import DataParallelLearner

        self.learner = DataParallelLearner(space_info(cfg.env), cfg.policy, cfg.ppo, cfg.agent_seeds, self.device,
                                           rank=self.rank, world=self.world)
        return os.getpid()

    def call(self, method: str, *args: Any) -> Any:
        """Calls `method` of this rank's learner with `args`: the group's one way into it."""
        return getattr(self.learner, method)(*args)


class LearnerGroup:
    """`num_learners` learner actors behind the `ppo.Learner` interface `training.Training` uses."""

    def __init__(self, cfg: ExperimentConfig):
        n, ls = cfg.learners.num_learners, cfg.learners
        options = in_trial_group(ls.cpus_per_learner)
        if ls.gpus_per_learner > 0:
            options["num_gpus"] = ls.gpus_per_learner
        self.actors = [ray.remote(LearnerActor).options(**options).remote(cfg, rank, n) for rank in range(n)]
        master = ray.get(self.actors[0].address.remote()) if n > 1 else None
        self.pids = ray.get([a.start.remote(master) for a in self.actors])

    def _all(self, method: str, *args: Any) -> list[Any]:
        return ray.get([a.call.remote(method, *args) for a in self.actors])

    def update(self, batch: Any, lr: float) -> dict[str, list[float]]:
        """The update on every rank (see `ppo.Learner.update`); rank 0's metrics."""
        ref = ray.put(batch)  # one copy per node, whatever the number of learners
        return self._all("update", ref, lr)[0]

    def weights(self) -> Weights:
        """Rank 0's network as numpy arrays (every rank holds the same)."""
        return ray.get(self.actors[0].call.remote("weights"))

    def finite(self) -> list[bool]:  # the ranks' parameters are equal by construction: rank 0 answers
        """Per agent, whether every one of its parameters is a finite number."""
        return ray.get(self.actors[0].call.remote("finite"))

    def state_bytes(self) -> bytes:
        """Rank 0's network, optimiser and torch RNG as `torch.save` bytes (`ppo.Learner.state_bytes`)."""
        return ray.get(self.actors[0].call.remote("state_bytes"))

    def load_state_bytes(self, data: bytes) -> None:
        """Loads `state_bytes()` into every rank."""
        self._all("load_state_bytes", data)

    def rng_state(self) -> list[dict]:
        """Rank 0's minibatch RNG states (the ranks shuffle alike: they split each minibatch by position)."""
        return ray.get(self.actors[0].call.remote("rng_state"))

    def set_rng_state(self, state: list[dict] | dict) -> None:
        """Sets every rank's minibatch RNGs to `state`."""
        self._all("set_rng_state", state)

    def set_ppo(self, ppo: Any) -> None:
        """Every rank's update settings from now on (`ppo.Learner.set_ppo`)."""
        self._all("set_ppo", ppo)

    def settings(self) -> Any:
        """The update settings rank 0 runs with (every rank is given the same)."""
        return ray.get(self.actors[0].call.remote("settings"))

    def node_ids(self) -> list[str]:
        """The Ray node ids of the learner actors, by rank."""
        return node_ids(self.actors)

    def close(self) -> None:  # (killing a rank ends its process group with it)
        """Kills the learner actors."""
        for a in self.actors:
            ray.kill(a)
        self.actors = []
