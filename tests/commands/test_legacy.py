"""A sweep started before the package took its folders resumes: what Tune pickled of its run config
(callbacks, stopper, trial-folder function; tests/data/run_config_before_folders.pkl, written by the
older layout) loads into today's classes."""

import subprocess
import sys

from tests.conftest import ROOT, cli_env

LOAD = """
import sys
import ray.cloudpickle as cloudpickle
{accept}
objects = cloudpickle.loads(open({path!r}, "rb").read())
from rlsweep.tracking.callback import MlflowCallback
from rlsweep.tracking.parents import SingleRun, SweepParent
from rlsweep.tuning.progress import ProgressLine
from rlsweep.tuning.signing import SignTuneState
from rlsweep.tuning.stopper import TrialStopper
sweep_cb, signer, line = objects["callbacks"]
assert type(sweep_cb) is MlflowCallback and type(sweep_cb.parent) is SweepParent, sweep_cb.__dict__
assert sweep_cb.parent.name == "old-sweep" and sweep_cb.parent.kind == "trial"
assert sweep_cb.parent.trial_run({{"name": "x", "ppo": {{"lr": 0.01}}}}, "003")[0] == "003 lr=0.01"
assert "parent" in sweep_cb.__getstate__() and "sweep" not in sweep_cb.__getstate__()
assert sweep_cb.stop_reason({{"eval_return_mean": 480.0}}) == "reached target return 475"
assert type(signer) is SignTuneState and type(line) is ProgressLine and type(objects["stop"]) is TrialStopper
train_cb = objects["train_callback"]
assert type(train_cb.parent) is SingleRun and train_cb.parent.tags == {{"rlsweep.restored_from": "/x"}}
class T:
    trial_id = "ab12"
assert objects["trial_dirname_creator"](T()) == "trial_ab12"
print("loaded")
"""


def load(accept: bool) -> subprocess.CompletedProcess:
    code = LOAD.format(path=str(ROOT / "tests/data/run_config_before_folders.pkl"),
                       accept="from rlsweep.commands.legacy import accept_moved_names; accept_moved_names()"
                       if accept else "")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=cli_env())


def test_an_older_sweeps_run_config_loads_into_todays_classes():
    r = load(accept=True)
    assert r.returncode == 0 and "loaded" in r.stdout, r.stderr[-3000:]


def test_without_the_moved_names_it_would_not():
    r = load(accept=False)
    assert r.returncode != 0 and ("rlsweep.callback" in r.stderr or "Can't get attribute" in r.stderr), r.stderr[-2000:]
