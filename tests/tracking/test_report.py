"""The sweep's summary: the best trial's config as an experiment file that `rlsweep train` runs as is."""

import yaml

from rlsweep.config import validate
from rlsweep.tracking.report import best_config_yaml
from tests.conftest import small_config


def test_the_best_config_is_a_runnable_experiment_beside_its_trials():
    row = {"trial_id": "ab_00003", "number": "004", "eval_return_mean": 480.0,
           "config": small_config(ppo={"lr": 0.00123})}
    text = best_config_yaml(row, "cartpole-20261201", "eval_return_mean")
    assert text.startswith("# best trial ab_00003 of sweep cartpole-20261201: eval_return_mean = 480.0\n")
    exp = validate(yaml.safe_load(text))
    assert exp.name == "cartpole-20261201-best" and exp.ppo.lr == 0.00123
    assert exp.tracking.experiment == "test"  # its runs go to the sweep's MLflow experiment, named apart
