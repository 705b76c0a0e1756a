"""The Atari preset (`env.preset: atari`): ALE's native vector env with the standard pipeline.

ale_py's `AtariVectorEnv` steps its games in C++ threads and does the preprocessing of Mnih et al.
(2015) and Machado et al. (2018) there: up to 30 no-op actions at a game's start, frame skip 4 with the
max over the last two frames, 84 x 84 grayscale, 4 stacked frames (uint8, channels first), FIRE at a
game's start where the game has it. `AtariGames` adds what is training-only, as CleanRL's `ppo_atari`
and Stable-Baselines3's `AtariWrapper` do:

- training: a lost life ends the episode (terminated: no bootstrap across it) and the next step, the
  one the sampler treats as the autoreset step, presses FIRE (or NOOP) instead of the agent's action,
  as those wrappers' reset after a lost life does; rewards are clipped to their sign.
- evaluation: whole games and their unclipped score; FIRE after a lost life, where the game has it (a
  greedy policy that never learned to press it would otherwise stand still to the time limit).

Either way each game's unclipped score and length are reported in the info (`envs.SCORE`) when it
ends, so the episode returns a sweep reports are game scores. The emulator's state is native: a
checkpoint cannot hold it, and a restored trial starts new games (`envs.env_state` says None).
ALE's vector env renders no frames: a video shows what the agent sees (`AgentView`).
"""

from __future__ import annotations

import functools
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import EnvSpec
from gymnasium.vector import VectorEnv, VectorWrapper

from rlsweep.config import ConfigError, EnvConfig
from rlsweep.envs import SCORE, SCORE_LENGTH

FRAME_SKIP = 4
MAX_FRAMES = 108_000  # 30 minutes of play at 60 Hz: the limit ALE's v5 games and the literature use

# env.kwargs the preset passes on to the games (the pipeline itself is fixed)
KWARGS = ("repeat_action_probability", "full_action_space", "num_threads", "noop_max")
_SEED_SPAN = 2**31 - 2**20  # ALE takes int32 seeds, one per sub-env counted up from the first


def game_of(cfg: EnvConfig, spec: EnvSpec) -> tuple[str, dict[str, Any]]:
    """The ROM name and the game settings (sticky actions, action set) of an ALE env id: its
    registration's, with `env.kwargs` over them; a ConfigError for an id that is not an ALE game or a
    kwarg the preset does not take."""
    if not (isinstance(spec.entry_point, str) and spec.entry_point.startswith("ale_py")) or "game" not in spec.kwargs:
        raise ConfigError(f"key 'env.preset': atari needs an Atari game id such as ALE/Breakout-v5, "
                          f"not {cfg.id!r}")
    unknown = sorted(set(cfg.kwargs) - set(KWARGS))
    if unknown:
        raise ConfigError(f"key 'env.kwargs': {', '.join(unknown)} not taken with env.preset atari "
                          f"(it takes: {', '.join(KWARGS)})")
    settings = {"repeat_action_probability": spec.kwargs.get("repeat_action_probability", 0.0),
                "full_action_space": spec.kwargs.get("full_action_space", False),
                **cfg.kwargs}
    return str(spec.kwargs["game"]), settings


def make(cfg: EnvConfig, spec: EnvSpec, num_envs: int, training: bool) -> AtariGames:
    """`num_envs` games of `cfg`'s id in the standard pipeline, for training or for evaluation."""
    from ale_py.vector_env import AtariVectorEnv

    game, settings = game_of(cfg, spec)
    frames = cfg.max_episode_steps * FRAME_SKIP if cfg.max_episode_steps else MAX_FRAMES
    env = AtariVectorEnv(
        game=game, num_envs=num_envs, max_num_frames_per_episode=frames, frameskip=FRAME_SKIP,
        img_height=84, img_width=84, grayscale=True, stack_num=4, maxpool=True, use_fire_reset=True,
        episodic_life=False, life_loss_info=False, reward_clipping=False,
        **{"num_threads": 1, "noop_max": 30, **settings})
    return AtariGames(env, _fire_action(game, bool(settings["full_action_space"])), training)


@functools.cache
def _fire_action(game: str, full_action_space: bool) -> int:
    """The index of FIRE in the game's action set, else NOOP's (0)."""
    from ale_py.env import AtariEnv

    env = AtariEnv(game=game, full_action_space=full_action_space)
    try:
        meanings = env.get_action_meanings()
    finally:
        env.close()
    return meanings.index("FIRE") if "FIRE" in meanings else 0


class AtariGames(VectorWrapper):
    """ALE's vector env with the training-only parts (`training`) and game scores; see the module."""

    def __init__(self, env: VectorEnv, fire: int, training: bool):
        super().__init__(env)
        self.fire = fire
        self.training = training
        n = env.num_envs
        self.score = np.zeros(n)
        self.length = np.zeros(n, np.int64)
        self.lives = np.zeros(n, np.int64)
        self.press_fire = np.zeros(n, bool)  # a life was lost on the last step: this step presses FIRE
        self.game_over = np.zeros(n, bool)  # the last step ended the game: this step is ALE's reset

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        obs, info = self.env.reset(seed=None if seed is None else int(seed) % _SEED_SPAN, options=options)
        self.score[:] = 0.0
        self.length[:] = 0
        self.lives = np.asarray(info["lives"], np.int64).copy()
        self.press_fire[:] = False
        self.game_over[:] = False
        return obs, info

    def step(self, actions: np.ndarray) -> tuple[Any, ...]:
        actions = np.asarray(actions, np.int64)
        if self.press_fire.any():
            actions = np.where(self.press_fire, self.fire, actions)
        obs, reward, terminated, truncated, info = self.env.step(actions)
        reward = np.asarray(reward, np.float64)
        terminated, truncated = np.asarray(terminated, bool), np.asarray(truncated, bool)
        lives = np.asarray(info["lives"], np.int64)
        played = ~self.game_over  # (ALE's reset step after a game's end counts toward no game)
        self.score += np.where(played, reward, 0.0)
        self.length += played
        ended = played & (terminated | truncated)  # ALE's episodes are whole games (its life_loss_info off)
        info = dict(info)
        info[SCORE] = np.where(ended, self.score, np.nan)
        info[SCORE_LENGTH] = np.where(ended, self.length, 0)
        self.score[ended] = 0.0
        self.length[ended] = 0
        lost = played & ~ended & (lives < self.lives)
        # training: a lost life ends the episode, and the next step is its autoreset step (FIRE, or NOOP
        # where the game has no FIRE); evaluation: FIRE where the game has it, the game goes on
        self.press_fire = lost if self.training or self.fire else np.zeros_like(lost)
        if self.training:
            terminated = terminated | lost
            reward = np.sign(reward)
        self.game_over = ended
        self.lives = lives
        return obs, reward, terminated, truncated, info


class AgentView(gym.Env):
    """One evaluation game as a single env whose rgb_array frame is what the agent sees: the newest of
    its stacked 84x84 grayscale frames, 3x enlarged (what `engine.video` films of an Atari game)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 60 / FRAME_SKIP}
    SCALE = 3

    def __init__(self, games: AtariGames):
        self.games = games
        self.observation_space, self.action_space = games.single_observation_space, games.single_action_space
        self._obs: np.ndarray | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        obs, _ = self.games.reset(seed=seed)
        self._obs = obs[0]
        return self._obs, {}

    def step(self, action: Any) -> tuple[Any, ...]:
        obs, reward, terminated, truncated, _ = self.games.step(np.asarray([action], np.int64))
        self._obs = obs[0]
        return self._obs, float(reward[0]), bool(terminated[0]), bool(truncated[0]), {}

    def render(self) -> np.ndarray:
        frame = self._obs[-1].repeat(self.SCALE, axis=0).repeat(self.SCALE, axis=1)
        return np.repeat(frame[..., None], 3, axis=-1)

    def close(self) -> None:
        self.games.close()
