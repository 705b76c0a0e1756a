"""Real gymnasium envs that go wrong, for the fault tests: CartPole dynamics with a fault injected."""

import math
import time
from pathlib import Path

from gymnasium.envs.classic_control.cartpole import CartPoleEnv


class NanRewardCartPole(CartPoleEnv):
    """From step `nan_after` on (counted across episodes) every reward is NaN."""

    def __init__(self, nan_after: int = 100, **kwargs):
        super().__init__(**kwargs)
        self.nan_after, self.steps = nan_after, 0

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        self.steps += 1
        return obs, (math.nan if self.steps > self.nan_after else reward), terminated, truncated, info


class CrashOnceCartPole(CartPoleEnv):
    """Raises at step `crash_after` unless the file `marker` exists, which it creates first: the first
    process to get there crashes, every later one runs normally."""

    def __init__(self, marker: str, crash_after: int = 100, **kwargs):
        super().__init__(**kwargs)
        self.marker, self.crash_after, self.steps = Path(marker), crash_after, 0

    def step(self, action):
        self.steps += 1
        if self.steps == self.crash_after and not self.marker.exists():
            self.marker.touch()
            raise RuntimeError("injected env crash")
        return super().step(action)


class HangingCartPole(CartPoleEnv):
    """From step `hang_after` on (counted across episodes) `step()` never returns, as a simulator in a
    deadlock would (it sleeps; only killing its process ends it)."""

    def __init__(self, hang_after: int = 100, marker: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.hang_after, self.steps = hang_after, 0
        self.marker = Path(marker) if marker else None  # with a marker: only the first process to get there hangs

    def step(self, action):
        self.steps += 1
        if self.steps == self.hang_after and (self.marker is None or not self.marker.exists()):
            if self.marker is not None:
                self.marker.touch()
            while True:
                time.sleep(3600)
        return super().step(action)


class NoRenderCartPole(CartPoleEnv):
    """CartPole without an rgb_array render mode: it cannot be filmed."""

    metadata = {"render_modes": [], "render_fps": 50}


class BrokenRenderCartPole(CartPoleEnv):
    """CartPole whose renderer fails, as an OpenGL renderer does on a machine without a display."""

    def render(self):
        raise RuntimeError("no display to render to")
