"""A sweep's record and the lock that keeps a second process from running it at the same time."""

import signal
import subprocess
import sys
import time

import pytest

from rlsweep.commands.record import LOCK_FILE, SweepLock
from rlsweep.config import ConfigError
from tests.conftest import cli_env

HOLD = ("import sys, time; from pathlib import Path; from rlsweep.commands.record import SweepLock; "
        "lock = SweepLock(Path(sys.argv[1])).acquire('s'); print('held', flush=True); time.sleep(600)")


def test_one_process_at_a_time_and_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env=cli_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=rf"sweep s is running in process {holder.pid} \({tmp_path}\)"):
            SweepLock(tmp_path).acquire("s")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    deadline = time.time() + 10
    while True:  # the kernel lets go of a dead process's lock
        try:
            lock = SweepLock(tmp_path).acquire("s")
            break
        except ConfigError:
            assert time.time() < deadline
            time.sleep(0.05)
    assert (tmp_path / LOCK_FILE).read_text().strip().isdigit()
    lock.release()
    SweepLock(tmp_path).acquire("s").release()  # released: taken again at once
