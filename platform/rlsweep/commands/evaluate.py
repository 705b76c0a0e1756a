"""`rlsweep evaluate`: deterministic (or sampled) episodes with a checkpoint's policy, without Ray.

The story: fetch the checkpoint (a folder, or an MLflow artifact URI downloaded from the store), load
its policy once (verified whole), play the episodes in one evaluator, and return what they scored.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlsweep import metrics as M
from rlsweep.commands import inputs
from rlsweep.config import ConfigError, TrackingConfig, check_seed


@dataclass(frozen=True)
class EvaluateOutcome:
    """What the episodes scored (the evaluator's metrics), and how they were played."""

    env_id: str
    episodes: int
    deterministic: bool
    seed: int
    metrics: dict[str, Any]
    agents: int = 1  # a checkpoint of K agents (sweep.seeds_per_trial): each plays the episodes, agent k on seed + k
    target: float | None = None  # the experiment's stop.target_return
    at_target: int = 0  # agents whose mean return over these episodes meets it
    # with --video: records it once called (after the scores are out, so that a renderer that crashes
    # the process cannot take them along), returning the `engine.video.Video` or why there is none
    film: Callable[[], Any] | None = None


def check_video_path(path: str) -> Path:
    """--video FILE: a new .gif in a folder that exists (a file already there is never overwritten)."""
    out = Path(path)
    if out.suffix.lower() != ".gif":
        raise ConfigError(f"--video {path}: expected a file name ending in .gif (an animated GIF is written)")
    if not out.parent.is_dir():
        raise ConfigError(f"--video {path}: folder {out.parent} does not exist")
    if out.exists():
        raise ConfigError(f"--video {path}: the file exists; it is not overwritten (choose another name)")
    return out


def evaluate(ref: str, episodes: int | None = None, seed: int = 0, tracking_uri: str | None = None,
             video: str | None = None) -> EvaluateOutcome:
    """Plays `episodes` episodes (default: the experiment's `evaluation.episodes`) with the policy of
    the checkpoint `ref`.

    Args:
        ref: a checkpoint folder, an MLflow artifact URI (`runs:/<id>/...`), or a registered model
            (`models:/NAME@champion`, `models:/NAME/VERSION`) or its folder.
        seed: seeds the episodes.
        tracking_uri: the store for an MLflow URI (default: as `ui` finds it).
        video: also write a GIF of the first agent's deterministic episode on `seed` here
            (`engine.video`), when the outcome's `film` is called; an env that cannot render gets a
            note instead.
    """
    check_seed(seed, "--seed")
    if episodes is not None and episodes < 1:
        raise ConfigError(f"--episodes {episodes}: expected at least 1")
    out = check_video_path(video) if video is not None else None
    given = ref
    with tempfile.TemporaryDirectory(prefix="rlsweep-checkpoint-") as scratch:
        if inputs.is_mlflow_uri(ref):
            from rlsweep.tracking.store import check_store, resolve_uri

            uri = tracking_uri or resolve_uri(TrackingConfig())
            check_store(uri, must_exist=True)  # an unreachable server fails in seconds; no empty store is made
            ref = inputs.download(ref, uri, scratch)
        elif inputs.is_remote(ref):  # a checkpoint in a bucket
            ref = inputs.fetch(ref, "", scratch)
        from rlsweep.ppo import checkpoint
        from rlsweep.tracking.model import policy_folder

        cfg, weights, stats = checkpoint.load_policy(policy_folder(ref, given))  # (a model: the checkpoint in it)
    if episodes is not None:
        cfg = cfg.model_copy(update={"evaluation": cfg.evaluation.model_copy(update={"episodes": episodes})})

    from rlsweep.engine.rollout import Evaluator

    evaluator = Evaluator(cfg.model_copy(update={"seed": seed}))
    try:
        per_agent = evaluator.evaluate(weights, stats, iteration=0)
    finally:
        evaluator.close()
    def film() -> Any:
        from rlsweep.engine.video import CannotRender, record

        try:
            return record(cfg, weights, stats, out, seed=seed)
        except CannotRender as e:
            return f"no video: the env {cfg.env.id!r} cannot render: {e}"
    target = cfg.stop.target_return
    at_target = 0 if target is None else sum(v >= target for v in per_agent[M.EVAL_RETURN_MEAN])
    return EvaluateOutcome(cfg.env.id, cfg.evaluation.episodes, cfg.evaluation.deterministic, seed,
                           M.summarise(per_agent, evaluator.seeds), len(evaluator.seeds), target, at_target,
                           film if out is not None else None)
