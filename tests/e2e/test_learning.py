"""Learning checks through the real command: each is a full `rlsweep train` run (slow)."""

import json
import re
from pathlib import Path

import pytest

from tests.conftest import printed, rlsweep


def solve(experiment, seed, tmp_path):
    r = rlsweep("train", experiment, "--seed", seed, "--set", f"results_dir={tmp_path}",
                "--set", f"tracking.local_dir={tmp_path}", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_cartpole_solves_within_100k_steps(seed, tmp_path):
    out = solve("experiments/cartpole_ppo.yaml", seed, tmp_path)
    assert "finished: reached target return 475" in out
    assert printed(out, "eval_return_mean") >= 475
    assert printed(out, "env_steps") <= 100_000


@pytest.mark.slow
def test_pendulum_reaches_minus_200_within_200k_steps(tmp_path):
    out = solve("experiments/pendulum_ppo.yaml", 0, tmp_path)
    assert "finished: reached target return -200" in out
    assert printed(out, "eval_return_mean") >= -200
    assert printed(out, "env_steps") <= 200_000
    # every iteration was recorded, with the env-step counter increasing by one batch each time
    trial_dir = Path(re.search(r"^trial dir:\s+(.+)$", out, re.M).group(1))
    steps = [json.loads(line)["env_steps"] for line in (trial_dir / "result.json").read_text().splitlines()]
    assert steps == [2048 * (i + 1) for i in range(len(steps))]
