"""Real gymnasium envs that go wrong, for the fault tests: CartPole dynamics with a fault injected."""

import math
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
