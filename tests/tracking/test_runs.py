"""What a run is named and tagged with."""

from rlsweep.config import validate
from tests.conftest import small_config


def test_trial_run_names_carry_the_number_and_the_searched_values():
    from rlsweep.ranking import trial_number
    from rlsweep.tracking.runs import trial_run_name

    cfg = validate(small_config(ppo={"lr": 0.000312345, "gamma": 0.98765, "train_batch_size": 128}))
    config = cfg.model_dump(mode="json")
    assert trial_number("3_lr=0.1,gamma=0.9", "ab12c") == "003" and trial_number("", "ab12c") == "ab12c"
    assert trial_run_name("003", config, ["ppo.lr", "ppo.gamma", "ppo.train_batch_size"]) == \
        "003 lr=0.000312 gamma=0.988 batch=128"
    assert trial_run_name("011", config, ["policy.hidden_sizes"]) == "011 hidden=16x16"
    assert trial_run_name("t1", config, []) == "t1"
