"""The tracking store opened by several processes at once, as two sweeps started together do."""

import subprocess
import sys
import time

import pytest

from tests.conftest import cli_env


@pytest.mark.slow
def test_processes_opening_a_fresh_sqlite_store_at_once_do_not_race(tmp_path):
    """Four processes create the same brand-new store (and experiment) at the same moment, as two
    sweeps started together do: every one gets it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = ("import sys, time; from rlsweep.tracking.store import Store\n"
            "time.sleep(max(0, float(sys.argv[2]) - time.time()))\n"
            "print(Store(sys.argv[1], 'together').tracker().experiment_id)")
    start = time.time() + 4  # after every interpreter has imported MLflow
    procs = [subprocess.Popen([sys.executable, "-c", code, uri, str(start)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=cli_env())
             for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-1500:] for _, e in outs]
    assert len({o.strip() for o, _ in outs}) == 1
