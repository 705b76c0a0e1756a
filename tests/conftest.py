import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the in-process trainable tests (2 CPUs, like the smallest machine)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def small_config(env_id="CartPole-v1", workers=1, **sections):
    """A tiny experiment dict: 4 envs per worker, 16-step fragments."""
    from rlsweep.config import validate

    cfg = {
        "name": "test",
        "seed": 3,
        "env": {"id": env_id},
        "policy": {"hidden_sizes": [16, 16]},
        "ppo": {"train_batch_size": 64 * max(1, workers), "minibatch_size": 32, "num_epochs": 2, "lr": 1e-3},
        "rollouts": {"num_rollout_workers": workers, "num_envs_per_worker": 4},
        "evaluation": {"interval": 2, "episodes": 3},
        "stop": {"env_steps": 1000},
        "resources": {"worker_cpus": 0.25, "evaluation_cpus": 0.25, "learner_cpus": 0.5},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    return validate(cfg).model_dump(mode="json")
