"""A short animated GIF of a checkpoint's policy playing one deterministic episode.

`record` makes one env with `render_mode="rgb_array"`, plays agent `agent` of the policy greedily from
a seeded reset, keeps at most `MAX_SECONDS` of the episode at no more than `FPS` frames a second,
scaled to at most `WIDTH` pixels wide, and writes a looping GIF with Pillow (matplotlib's own
dependency: nothing more to install). CartPole's full 500-step episode is 10 s, ~250 frames, ~130 KiB.

An env that cannot render (no rgb_array mode, a renderer that is not installed or fails on this
machine) raises `CannotRender` with the reason: callers turn it into a note, never a failure.
`Recording` (and `record_apart`, which waits for it) runs it in a child process with a time limit, so that a renderer that crashes or hangs
(an OpenGL context on a headless machine) takes nothing else down.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

MAX_SECONDS = 10.0
FPS = 25.0
WIDTH = 320


class CannotRender(Exception):
    """The env gives no frames here; the message says why."""


@dataclass(frozen=True)
class Video:
    """What was written: the GIF, its frames and length, and the episode it shows (its return over the
    steps shown; `complete` when the episode ended within them)."""

    path: str
    frames: int
    seconds: float
    size_bytes: int
    episode_return: float
    steps: int
    complete: bool

    def describe(self) -> str:
        episode = "the whole episode" if self.complete else f"its first {self.steps} steps"
        return (f"{self.path} ({self.frames} frames, {self.seconds:.1f} s, {self.size_bytes / 1024:.0f} KiB; "
                f"{episode}, return {self.episode_return:.6g})")


def _why(e: BaseException) -> str:
    """An exception in one line: its type, and its message's first line when it has one."""
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _frame(env: Any) -> np.ndarray:
    try:
        frame = env.render()
    except Exception as e:  # noqa: BLE001 - a renderer's own failure (no display, no GL) is the note
        raise CannotRender(f"its renderer failed: {_why(e)}") from None
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[-1] not in (3, 4):
        raise CannotRender("render() gave no RGB frame")
    return frame[..., :3]


def record(cfg: Any, weights: dict[str, list[np.ndarray]], stats: list[Any] | None, path: str | Path,
           seed: int = 0, agent: int = 0) -> Video:
    """Plays agent `agent`'s deterministic policy for one episode (at most MAX_SECONDS of frames) on an
    env reset with `seed` and writes the GIF to `path`.

    Args:
        cfg: the checkpoint's experiment (`config.ExperimentConfig`).
        weights: the agents' policies (`ppo.checkpoint.load_policy`), each array (K, ...).
        stats: the agents' observation statistics, or None.
    """
    from rlsweep.envs import make_render_env, space_info

    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame's renderers draw off-screen: no display wanted
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    from rlsweep.ppo.normalization import normalize_each
    from rlsweep.ppo.policy import NumpyPolicy, one_agent

    try:
        env = make_render_env(cfg.env)
    except Exception as e:  # noqa: BLE001 - an env that cannot be made to render is a note
        raise CannotRender(f"it cannot be made with render_mode='rgb_array': {_why(e)}") from None
    try:
        if "rgb_array" not in (env.metadata.get("render_modes") or []):
            raise CannotRender("it has no rgb_array render mode")
        policy = NumpyPolicy(space_info(cfg.env), cfg.policy)
        policy.load(one_agent(weights, agent))
        mine = None if stats is None else [stats[agent]]
        source_fps = float(env.metadata.get("render_fps") or FPS)
        stride = max(1, round(source_fps / FPS))
        fps = source_fps / stride
        limit = int(MAX_SECONDS * fps) + 1  # the reset's frame, then MAX_SECONDS of steps
        obs, _ = env.reset(seed=seed)
        frames = [_frame(env)]
        total, steps, done = 0.0, 0, False
        while not done and len(frames) < limit:
            x = policy.prepare(np.asarray(obs)[None, None])
            if mine is not None:
                x = normalize_each(mine, x)
            action = policy.to_env(policy.greedy(x))[0, 0]
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            steps += 1
            done = bool(terminated or truncated)
            if steps % stride == 0 or done:
                frames.append(_frame(env))
    finally:
        env.close()
    shown = _write_gif(frames, fps, Path(path))
    return Video(str(path), shown, len(frames) / fps, Path(path).stat().st_size, total, steps, done)


def _write_gif(frames: list[np.ndarray], fps: float, path: Path) -> int:
    """Writes the GIF; returns its frame count (Pillow merges identical frames into a longer one)."""
    from PIL import Image

    h, w = frames[0].shape[:2]
    scale = min(1.0, WIDTH / w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    images = [Image.fromarray(np.ascontiguousarray(f, np.uint8)).resize(size, Image.Resampling.BILINEAR)
              for f in frames]
    # one palette for every frame (the first's): small files, no flicker between frames' palettes
    palette = images[0].quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    images = [im.quantize(palette=palette, dither=Image.Dither.NONE) for im in images]
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        images[0].save(partial, format="GIF", save_all=True, append_images=images[1:], loop=0,
                       duration=max(20, round(1000 / fps)), optimize=False)
        os.link(partial, path)  # whole or not at all, and never over a file that appeared meanwhile
    finally:
        partial.unlink(missing_ok=True)
    with Image.open(path) as written:
        return written.n_frames


def record_checkpoint(checkpoint: str, path: str | Path, seed: int = 0, agent: int = 0) -> Video:
    """`record` for the policy of a checkpoint folder (verified whole, as `evaluate` loads it)."""
    from rlsweep.ppo import checkpoint as ckpt

    cfg, weights, stats = ckpt.load_policy(checkpoint)
    return record(cfg, weights, stats, path, seed=seed, agent=agent)


class Recording:
    """`record_checkpoint` running in a child process, started at once; `result()` waits for it."""

    def __init__(self, checkpoint: str, path: str | Path, seed: int = 0, timeout_s: float = 120.0):
        self.timeout_s = timeout_s
        self._deadline = time.monotonic() + timeout_s
        self._scratch = tempfile.TemporaryDirectory(prefix="rlsweep-video-")
        self._answer = Path(self._scratch.name) / "video.json"
        self._stderr = Path(self._scratch.name) / "stderr.txt"  # (a file: a pipe nobody reads fills up)
        try:
            with open(self._stderr, "wb") as err:
                self._proc = subprocess.Popen(  # noqa: S603 - this Python, this module
                    [sys.executable, "-m", "rlsweep.engine.video", str(checkpoint), str(path), "--seed",
                     str(seed), "--answer", str(self._answer)], stdout=subprocess.DEVNULL, stderr=err)
        except BaseException:
            self._scratch.cleanup()
            raise

    def result(self) -> Video | str:
        """The Video, or why there is none (a line for a note); the child is gone when it returns. A
        child that has finished is read whatever the time; one still running gets what is left of
        `timeout_s` since it started (at least a second)."""
        try:
            if self._proc.poll() is None:
                self._proc.wait(timeout=max(1.0, self._deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.cancel()
            return f"no video: recording took over {self.timeout_s:.0f} s"
        except BaseException:
            self.cancel()
            raise
        try:
            if self._answer.exists():
                data = json.loads(self._answer.read_text())
                return Video(**data["video"]) if "video" in data else f"no video: {data['note']}"
            stderr = self._stderr.read_text(errors="replace")
            last = (stderr.strip().splitlines() or [f"exit status {self._proc.returncode}"])[-1]
            return f"no video: the recorder failed ({last})"
        finally:
            self._scratch.cleanup()

    def cancel(self) -> None:
        """Stops the child (if it still runs) and waits for it."""
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._scratch.cleanup()


def record_apart(checkpoint: str, path: str | Path, seed: int = 0, timeout_s: float = 120.0) -> Video | str:
    """`record_checkpoint` in a child process: the Video, or why there is none (a line for a note)."""
    return Recording(checkpoint, path, seed, timeout_s).result()


def main(argv: list[str] | None = None) -> int:
    """The child process of `record_apart`: writes {"video": ...} or {"note": ...} to --answer."""
    p = argparse.ArgumentParser(prog="python -m rlsweep.engine.video")
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--answer", required=True)
    args = p.parse_args(argv)
    try:
        result: dict[str, Any] = {"video": asdict(record_checkpoint(args.checkpoint, args.out, seed=args.seed))}
    except CannotRender as e:
        result = {"note": f"the env cannot render: {e}"}
    Path(args.answer).write_text(json.dumps(result, allow_nan=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

