"""The worker group: the samplers and the evaluator of one trial, behind one interface.

`LocalWorkers` runs one `Sampler` and the `Evaluator` in the calling process (`num_rollout_workers:
0`, the fast default for cheap envs); `RemoteWorkers` runs each in a Ray actor inside the trial's
placement group. This module is the only place that calls `ray.get/put/kill` on them; Ray is imported
only when remote workers are made, so the local path (and `rlsweep evaluate`) never loads it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from rlsweep import compat
from rlsweep.config import ExperimentConfig
from rlsweep.engine.rollout import Evaluator, Sampler
from rlsweep.ppo.batch import Rollout
from rlsweep.ppo.normalization import RunningMeanStd
from rlsweep.ppo.policy import Weights

log = logging.getLogger(__name__)
T = TypeVar("T")
REPLACEMENT_START_S = 120.0  # how long a replacement worker may take to start (its process, its envs)


class WorkerTimeout(RuntimeError):
    """A worker did not answer in time, again: its env hangs (a retry from a checkpoint may get past it)."""


def _hung(what: str, cfg: ExperimentConfig, key: str, timeout_s: float, times: str) -> WorkerTimeout:
    return WorkerTimeout(f"{what} (env {cfg.env.id}) did not answer within {key} = {timeout_s:g} s{times}: "
                         "its env hangs or is far slower than expected")


class WorkerGroup(Protocol):
    """What a training iteration needs from its workers."""

    size: int  # number of samplers
    replaced: int  # workers replaced after they died, so far

    def sample(self, weights: Weights, obs_stats: list[RunningMeanStd] | None) -> list[Rollout]:
        """One rollout per sampler, in sampler order."""

    def evaluate(self, weights: Weights, obs_stats: list[RunningMeanStd] | None, iteration: int) -> dict[str, list[float]]:
        """The evaluator's metrics for `weights` (see `Evaluator.evaluate`)."""

    def get_states(self) -> list[dict[str, Any]]:
        """Each sampler's JSON-able state (envs, episode counters, RNG), in sampler order."""

    def set_states(self, states: list[dict[str, Any]], restart_seed: int) -> list[bool]:
        """Restores each sampler; False where its envs could not be restored and restarted episodes."""

    def wait_ready(self) -> None:
        """Returns once every worker has been built (so that timings measure work, not start-up)."""

    def close(self) -> None:
        """Releases envs and processes."""


class LocalWorkers:
    """One sampler and the evaluator, in this process."""

    size = 1
    replaced = 0

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg
        self.sampler = Sampler(cfg, 0)
        self.evaluator = Evaluator(cfg)
        self._hung = False

    def _within(self, fn: Callable[[], T], what: str, key: str, timeout_s: float) -> T:
        """`fn()` on a daemon thread, so that an env that never returns is noticed: the thread cannot be
        stopped, but it does not keep the process alive; the trial fails, and its process ends."""
        if self._hung:
            raise _hung(what, self.cfg, key, timeout_s, " before")
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                outcome["value"] = fn()
            except BaseException as e:  # noqa: BLE001 - raised again in the caller's thread
                outcome["error"] = e
            finally:
                done.set()

        threading.Thread(target=run, name="rlsweep-sampler", daemon=True).start()
        if not done.wait(timeout_s):
            self._hung = True
            raise _hung(what, self.cfg, key, timeout_s, " (in the trial's process: it cannot be replaced)")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    def sample(self, weights: Weights, obs_stats: list[RunningMeanStd] | None) -> list[Rollout]:
        """The one sampler's rollout, as a one-item list; a `WorkerTimeout` after `rollouts.sample_timeout_s`."""
        return [self._within(lambda: self.sampler.sample(weights, obs_stats), "the in-process sampler",
                             "rollouts.sample_timeout_s", self.cfg.rollouts.sample_timeout_s)]

    def evaluate(self, weights: Weights, obs_stats: list[RunningMeanStd] | None, iteration: int) -> dict[str, list[float]]:
        """The evaluator's metrics for `weights` (see `Evaluator.evaluate`); a `WorkerTimeout` after
        `evaluation.timeout_s`."""
        return self._within(lambda: self.evaluator.evaluate(weights, obs_stats, iteration), "the in-process evaluator",
                            "evaluation.timeout_s", self.cfg.evaluation.timeout_s)

    def get_states(self) -> list[dict[str, Any]]:
        """The one sampler's state, as a one-item list."""
        return [self.sampler.get_state()]

    def set_states(self, states: list[dict[str, Any]], restart_seed: int) -> list[bool]:
        """Restores the sampler from `states[0]`; [False] when its envs restarted their episodes."""
        return [self.sampler.set_state(states[0], restart_seed)]

    def wait_ready(self) -> None:
        """Nothing to wait for: the sampler and the evaluator were built in this process."""
        return None

    def close(self) -> None:
        """Closes the sampler's and the evaluator's envs (not while a hung env holds them)."""
        if not self._hung:
            self.sampler.close()
            self.evaluator.close()


class RemoteWorkers:
    """`num_rollout_workers` samplers and one evaluator, each a Ray actor in the trial's placement group.

    Made before the learner (which imports torch), so the actors' processes start meanwhile. A worker
    whose actor dies (its process killed, its node lost) is replaced by a new actor and its share of
    the call made again: at most that share of one iteration is sampled anew, on episodes that start
    afresh from a seed of their own. A replacement that dies too fails the call.
    """

    def __init__(self, cfg: ExperimentConfig):
        import ray

        self._ray = ray
        self.cfg = cfg
        self.samplers = [self._new_sampler(i) for i in range(cfg.rollouts.num_rollout_workers)]
        self.evaluator = self._new_evaluator()
        self.size = len(self.samplers)
        self.replaced = 0

    def _new_sampler(self, index: int) -> Any:
        return self._ray.remote(Sampler).options(**in_trial_group(self.cfg.resources.worker_cpus)).remote(self.cfg, index)

    def _new_evaluator(self) -> Any:
        return self._ray.remote(Evaluator).options(**in_trial_group(self.cfg.resources.evaluation_cpus)).remote(self.cfg)

    def _replace(self, index: int | None, error: BaseException) -> Any:
        """A new actor for sampler `index` (None: the evaluator), after `error` said the old one died or
        hangs (it is killed)."""
        what = "the evaluation worker" if index is None else f"rollout worker {index}"
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        log.warning("%s; replacing it and repeating its share of this iteration",
                    first if isinstance(error, WorkerTimeout) else f"{what} died ({first})")
        self.replaced += 1
        self._ray.kill(self.evaluator if index is None else self.samplers[index])
        if index is None:
            self.evaluator = new = self._new_evaluator()
        else:
            self.samplers[index] = new = self._new_sampler(index)
            # its envs start new episodes on a seed of their own (the dead actor's state is gone)
            new.reseed.remote(self.replaced)
        # the replacement's time to answer counts from when it stands (a process start takes seconds on
        # a busy machine), not from its launch
        try:
            self._ray.get(compat.actor_ready(new), timeout=REPLACEMENT_START_S)
        except self._ray.exceptions.GetTimeoutError:
            raise WorkerTimeout(f"the replacement for {what} (env {self.cfg.env.id}) did not start within "
                                f"{REPLACEMENT_START_S:g} s") from None
        return new

    def _get_each(self, refs: list[Any], again: Any, timeout: tuple[str, float] | None = None,
                  evaluator: bool = False) -> list[Any]:
        """Each ref's value; where an actor died, or did not answer within `timeout` (its config key and
        seconds, counted from now), `again(i, error)` on its replacement instead (with as long again).
        A replacement that dies or does not answer in time fails the call."""
        key, seconds = timeout if timeout is not None else ("", None)

        def get(ref: Any, deadline: float | None) -> Any:
            return self._ray.get(ref, timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))

        deadline = None if seconds is None else time.monotonic() + seconds
        out = []
        for i, ref in enumerate(refs):
            what = "the evaluation worker" if evaluator else f"rollout worker {i}"
            try:
                out.append(get(ref, deadline))
                continue
            except self._ray.exceptions.RayActorError as e:
                error: BaseException = e
            except self._ray.exceptions.GetTimeoutError:
                error = _hung(what, self.cfg, key, seconds, "")
            retry = again(i, error)
            try:
                out.append(get(retry, None if seconds is None else time.monotonic() + seconds))
            except self._ray.exceptions.GetTimeoutError:
                raise _hung(what, self.cfg, key, seconds, ", twice (replaced once)") from None
            if deadline is not None:  # the samplers still to be read had this long as well
                deadline = max(deadline, time.monotonic())
        return out

    def sample(self, weights: Weights, obs_stats: list[RunningMeanStd] | None) -> list[Rollout]:
        """One rollout per sampler actor, in sampler order; a sampler that died, or did not answer within
        `rollouts.sample_timeout_s`, is replaced and samples anew."""
        ref = self._ray.put(weights)  # one copy in the object store, however many samplers read it
        refs = [s.sample.remote(ref, obs_stats) for s in self.samplers]
        return self._get_each(refs, lambda i, e: self._replace(i, e).sample.remote(ref, obs_stats),
                              ("rollouts.sample_timeout_s", self.cfg.rollouts.sample_timeout_s))

    def evaluate(self, weights: Weights, obs_stats: list[RunningMeanStd] | None, iteration: int) -> dict[str, list[float]]:
        """The evaluator actor's metrics for `weights`; an evaluator that died, or did not answer within
        `evaluation.timeout_s`, is replaced and evaluates anew."""
        ref = self.evaluator.evaluate.remote(weights, obs_stats, iteration)
        return self._get_each([ref], lambda i, e: self._replace(None, e).evaluate.remote(weights, obs_stats, iteration),
                              ("evaluation.timeout_s", self.cfg.evaluation.timeout_s), evaluator=True)[0]

    def get_states(self) -> list[dict[str, Any]]:
        """Each sampler actor's state, in sampler order (see `Sampler.get_state`).

        A sampler that died is replaced and gives the state of its fresh episodes.
        """
        refs = [s.get_state.remote() for s in self.samplers]
        return self._get_each(refs, lambda i, e: self._replace(i, e).get_state.remote())

    def set_states(self, states: list[dict[str, Any]], restart_seed: int) -> list[bool]:
        """Restores each sampler actor from its state; False where its envs restarted their episodes.

        An actor that died fails the call: nothing is replaced here.
        """
        return self._ray.get([s.set_state.remote(st, restart_seed)
                              for s, st in zip(self.samplers, states, strict=True)])

    def wait_ready(self) -> None:
        """Blocks until every actor has been built (its process started, its envs made)."""
        self._ray.get([compat.actor_ready(a) for a in [*self.samplers, self.evaluator]])

    def node_ids(self, evaluator: bool = False) -> list[str]:
        """The Ray node ids of the samplers' actors (or of the evaluator's)."""
        return node_ids([self.evaluator] if evaluator else self.samplers)

    def close(self) -> None:
        """Kills the sampler and evaluator actors."""
        for actor in [*self.samplers, self.evaluator]:
            self._ray.kill(actor)
        self.samplers = []


def _node_id(actor: Any) -> str:
    """Run on an actor (`compat.actor_call`): the id of the node it lives on."""
    import ray

    return ray.get_runtime_context().get_node_id()


def node_ids(actors: list[Any]) -> list[str]:
    """The Ray node ids of these actors."""
    import ray

    return ray.get([compat.actor_call(a, _node_id) for a in actors])


def make_workers(cfg: ExperimentConfig) -> WorkerGroup:
    """Remote workers when the experiment asks for rollout workers, else local ones."""
    return RemoteWorkers(cfg) if cfg.rollouts.num_rollout_workers > 0 else LocalWorkers(cfg)


def in_trial_group(num_cpus: float) -> dict[str, Any]:
    """Actor options that place it in the current trial's placement group, when there is one."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = ray.util.get_current_placement_group()
    opts: dict[str, Any] = {"num_cpus": num_cpus}
    if pg is not None:
        opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            placement_group=pg, placement_group_capture_child_tasks=True
        )
    return opts
