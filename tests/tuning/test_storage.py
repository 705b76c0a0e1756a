"""The shared-storage probe on a real (local) Ray: the cluster cases (a node on its own disk, a
read-only one) are in test_cluster.py."""

import pytest

from rlsweep.config import ConfigError
from rlsweep.tuning.storage import check_shared_storage


def test_every_node_writes_a_probe_that_the_driver_sees_and_none_is_left(ray_local, tmp_path):
    results = tmp_path / "results"
    check_shared_storage(str(results))  # made where missing, as Tune would
    assert results.is_dir() and list(results.iterdir()) == []


def test_a_node_that_does_not_answer_in_time_is_named(ray_local, tmp_path):
    with pytest.raises(ConfigError) as e:
        check_shared_storage(str(tmp_path), timeout_s=0)
    [node] = [n for n in ray_local.nodes() if n["Alive"]]
    assert str(e.value).startswith(f"results_dir {tmp_path}: node {node['NodeID'][:8]} (") and \
        "did not answer a write probe within 0 s" in str(e.value), e.value
    assert list(tmp_path.iterdir()) == []
