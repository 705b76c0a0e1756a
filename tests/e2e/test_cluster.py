"""A real two-node Ray cluster on loopback (`ray.cluster_utils.Cluster`: a head and a worker node,
each its own raylet), joined with `--address`: trials, rollout actors and learner actors land on
both nodes, checkpoints and resume work across them, MLflow holds every run whole."""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import LR_ONLY, cli_env, rlsweep, rlsweep_process, runs_of, store_client

# one pytest-xdist worker runs them all, so that the module's cluster is started once
pytestmark = pytest.mark.xdist_group("cluster")

# one CPU a trial (trainable, a rollout worker, evaluation, a learner actor): two trials at once need
# both one-CPU nodes
EXP = """\
name: sweeptest
seed: 4
results_dir: {results}
checkpoint_frequency: 2
env: {{id: CartPole-v1}}
policy: {{hidden_sizes: [16, 16]}}
ppo: {{train_batch_size: 512, minibatch_size: 128, num_epochs: 8}}
rollouts: {{num_rollout_workers: 1, num_envs_per_worker: 8}}
learners: {{num_learners: 1, cpus_per_learner: 0.25}}
evaluation: {{interval: 1, episodes: 2}}
stop: {{env_steps: {steps}}}
resources: {{learner_cpus: 0.25, worker_cpus: 0.25, evaluation_cpus: 0.25}}
sweep: {{trials: 2, max_concurrent: 2, n_startup_trials: 2, seed: 3}}
tracking: {{local_dir: {store}, flush_s: 0}}
"""


@pytest.fixture(scope="module")
def cluster():
    """Two nodes of one CPU each, started like `ray start` nodes: a fixed cluster (no autoscaler)."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    try:
        yield c
    finally:
        c.shutdown()


def placed_on(run):
    """The nodes a trial's run says its processes were on (its `rlsweep.placement` tag), if it has one."""
    tag = run.data.tags.get("rlsweep.placement", "")
    return {node for part in tag.split() for node in part.split("=", 1)[1].split(",")}


def node_ids(cluster):
    return {cluster.head_node.node_id[:8], *(n.node_id[:8] for n in cluster.list_all_nodes())}


@pytest.mark.slow
def test_a_trial_bigger_than_a_fixed_cluster_is_refused_and_without_address_rlsweep_starts_its_own_ray(tmp_path, cluster):
    exp = tmp_path / "exp.yaml"
    exp.write_text(EXP.format(results=tmp_path / "results", store=tmp_path, steps=512))
    # 1.5 + 0.25 x 3 = 2.25 CPUs: more than both nodes together, and nothing will add nodes
    r = rlsweep("train", exp, "--address", cluster.address, "--set", "resources.learner_cpus=1.5")
    assert r.returncode == 2, r.stderr[-3000:]
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("rlsweep: error: a trial asks for 2.25 CPUs (resources.learner_cpus 1.5 + ") and \
        "but the cluster now has 2: " in line and "Ray knows of no autoscaler for this cluster" in line and \
        "--wait-for-resources" in line, line
    # 1.5 CPUs in all fit the two nodes together, but no node has 1.5 for the trainable's process
    r = rlsweep("train", exp, "--address", cluster.address, "--set", "resources.learner_cpus=1.5",
                "--set", "rollouts.num_rollout_workers=0", "--set", "learners.num_learners=0")
    assert r.returncode == 2, r.stderr[-3000:]
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("rlsweep: error: resources.learner_cpus 1.5: one process of a trial asks for 1.5 CPUs "
                           "on one node but no node of the cluster now has that (the most on one: 1 CPUs): ") and \
        "--wait-for-resources" in line, line
    assert not (tmp_path / "results").exists()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sweeptest")
    assert experiment is None or not client.search_runs([experiment.experiment_id])

    # no --address, no RAY_ADDRESS: a Ray of rlsweep's own, though a `ray start` cluster runs on this
    # machine (a bare ray.init() would join it)
    r = rlsweep("train", exp, "--set", "learners.num_learners=0", "--set", "rollouts.num_rollout_workers=0")
    assert r.returncode == 0, r.stderr[-3000:]
    [run] = client.search_runs([client.get_experiment_by_name("sweeptest").experiment_id])
    assert placed_on(run) and not placed_on(run) & node_ids(cluster), (placed_on(run), node_ids(cluster))


@pytest.mark.slow
def test_a_sweep_on_a_two_node_cluster_uses_both_nodes_and_resumes(tmp_path, cluster):
    steps = 4096
    exp = tmp_path / "exp.yaml"
    exp.write_text(EXP.format(results=tmp_path / "results", store=tmp_path, steps=steps))
    (tmp_path / "space.yaml").write_text(LR_ONLY)
    nodes = node_ids(cluster)
    assert len(nodes) == 2
    env = cli_env()
    proc = rlsweep_process("sweep", exp, "--space", tmp_path / "space.yaml", "--name", "two-nodes",
                           "--address", cluster.address, env=env)
    client = store_client(tmp_path, "sweeptest", proc)
    deadline = time.time() + 300
    # Ctrl-C once a trial is part-way through (the other may not have started yet, or be done: on a
    # loaded machine the two start seconds apart and take ~4 s each). A trial's placement tag is
    # rewritten when it is resumed, so the nodes it ran on before are noted here.
    seen = set()
    while True:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "no trial ever got going"
        try:
            children = [r for r in runs_of(client) if r.data.tags.get("rlsweep.kind") == "trial"]
            going = [c for c in children if 2 <= len(client.get_metric_history(c.info.run_id, "rollouts/env_steps")) <= 5]
        except Exception:  # the store may not exist yet
            children, going = [], []
        for c in children:
            seen |= placed_on(c)
        if going:
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err[-3000:]

    r = rlsweep("resume", "two-nodes", "--results-dir", tmp_path / "results", "--address", cluster.address, env=env)
    assert r.returncode == 0, r.stderr[-4000:]

    runs = runs_of(client)
    parents = [x for x in runs if x.data.tags.get("rlsweep.kind") == "sweep"]
    children = [x for x in runs if x.data.tags.get("rlsweep.kind") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED" and len(children) == 2
    for c in children:
        assert c.info.status == "FINISHED"
        steps_logged = [m.step for m in client.get_metric_history(c.info.run_id, "rollouts/env_steps")]
        assert steps_logged == list(range(512, steps + 1, 512))  # whole, once, across the resume
        placement = dict(part.split("=") for part in c.data.tags["rlsweep.placement"].split())
        assert set(placement) == {"trainable", "rollout", "evaluation", "learners"}
        seen |= placed_on(c)
        arts = {a.path for a in client.list_artifacts(c.info.run_id, "checkpoints")}
        assert {"checkpoints/final", "checkpoints/best"} <= arts
    assert seen == nodes, (seen, nodes)  # the trials' processes ran on both nodes, and nowhere else


@pytest.mark.slow
def test_on_an_autoscaling_cluster_a_trial_waits_for_nodes_up_to_the_autoscalers_ceiling(tmp_path, cluster):
    """The cluster config an autoscaler may report to the GCS (here reported by the test): node groups,
    their node sizes and most nodes. Above that ceiling a trial is refused; below it, it is said once
    and waits for nodes (Ctrl-C stops it); with --wait-for-resources it waits where none is reported."""
    from ray._raylet import GcsClient
    from ray.core.generated import autoscaler_pb2

    gcs = GcsClient(address=cluster.address)

    def report(workers=None, cpus=1):
        """A worker group of up to `workers` nodes of `cpus` CPUs each (the head is not a group)."""
        config = autoscaler_pb2.ClusterConfig()
        if workers is not None:
            group = config.node_group_configs.add(name="cpu-workers", max_count=workers)
            group.resources["CPU"] = cpus
        gcs.report_cluster_config(config.SerializeToString())

    exp = tmp_path / "exp.yaml"
    exp.write_text(EXP.format(results=tmp_path / "results", store=tmp_path, steps=512))
    too_big = ("--address", cluster.address, "--set", "resources.learner_cpus=1.5")  # 2.25 CPUs, 2 there now
    try:
        report(workers=1)  # the head and one more one-CPU node, at most
        r = rlsweep("train", exp, *too_big)
        assert r.returncode == 2, r.stderr[-3000:]
        [line] = r.stderr.strip().splitlines()
        assert "a trial asks for 2.25 CPUs" in line and "but the cluster at its autoscaler's largest has 2: " in line

        report(workers=4)  # 5 CPUs in all, but no node bigger than one CPU for the trainable's 1.5
        r = rlsweep("train", exp, *too_big)
        assert r.returncode == 2, r.stderr[-3000:]
        [line] = r.stderr.strip().splitlines()
        assert line == ("rlsweep: error: resources.learner_cpus 1.5: one process of a trial asks for 1.5 CPUs on one "
                        "node but no node of the cluster or that its autoscaler adds has that (the most on one: 1 "
                        "CPUs): lower resources.learner_cpus, or add larger nodes"), line

        report(workers=2, cpus=2)  # two-CPU nodes, 5 CPUs with the head: the trial fits once nodes come
        waits_then_ctrl_c(exp, *too_big)
    finally:
        report()  # no autoscaler again, for the module's other tests
    # an autoscaler that does not report itself (Ray's own): the user says it will add nodes
    waits_then_ctrl_c(exp, *too_big, "--wait-for-resources")


def waits_then_ctrl_c(exp, *args):
    """`rlsweep train` says once what the trial lacks, its live line says it waits while Tune holds it
    pending, and Ctrl-C then is an interruption of a trial that never started (exit 130)."""
    proc = rlsweep_process("train", exp, *args)
    watchdog = threading.Timer(120, lambda: os.killpg(proc.pid, signal.SIGKILL))  # readline cannot hang
    watchdog.start()
    try:
        said = proc.stderr.readline()  # the first line it prints
        assert "a trial asks for 2.25 CPUs" in said and "but the cluster now has 2" in said and \
            "its trials wait until nodes are added" in said, said
        for _ in range(20):  # then the live line, while Tune holds the trial pending
            said = proc.stderr.readline()
            if "] waiting for resources | " in said or not said:
                break
        assert "] waiting for resources | " in said, said
        assert proc.poll() is None  # waiting, not refused
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, out + err[-3000:]  # not "finished": it never ran
        assert "interrupted after 0 env steps; its trial never started" in err, err
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("mount,said", [
    ("rw", "wrote a file there that this machine does not see"),
    ("ro", "cannot write there (OSError: [Errno 30] Read-only file system"),
])
def test_a_node_that_does_not_share_results_dir_is_named_before_anything_starts(tmp_path, mount, said):
    """A second node whose results_dir is its own disk (here: a tmpfs in its own mount namespace,
    over the same path): it writes the probe and this machine never sees it, or (read-only) it cannot
    write at all. One line naming the node, exit 2, no sweep folder, no MLflow run."""
    from ray.cluster_utils import Cluster

    results = tmp_path / "results"
    results.mkdir()
    # root may make a mount namespace; anyone else, within a user namespace of their own
    unshare = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--mount"]
    ray_cli = str(Path(sys.executable).with_name("ray"))
    head = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    node = None
    try:
        node = subprocess.Popen([*unshare, "--propagation", "private", "sh", "-c",
                                 f"mount -t tmpfs -o {mount} rlsweep-test {results} && exec {ray_cli} start "
                                 f"--address {head.address} --num-cpus 1 --block --disable-usage-stats"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        deadline = time.time() + 120
        while len([n for n in head.global_state.node_table() if n["Alive"]]) < 2:
            assert node.poll() is None, f"the node in its own mount namespace did not start: {node.communicate()[1][-3000:]}"
            assert time.time() < deadline, "the second node never joined"
            time.sleep(0.5)
        [other] = [n["NodeID"][:8] for n in head.global_state.node_table() if n["Alive"] and
                   n["NodeID"] != head.head_node.node_id]
        exp = tmp_path / "exp.yaml"
        exp.write_text(EXP.format(results=results, store=tmp_path, steps=512))
        (tmp_path / "space.yaml").write_text(LR_ONLY)
        r = rlsweep("sweep", exp, "--space", tmp_path / "space.yaml", "--name", "apart", "--address", head.address)
        assert r.returncode == 2, r.stderr[-3000:]
        [line] = r.stderr.strip().splitlines()  # nothing of Ray's beside it (a probe's "Unhandled error")
        assert line.startswith(f"rlsweep: error: results_dir {results}: node {other} (") and \
            said in line and "shared filesystem" in line, line
        assert list(results.iterdir()) == []  # no sweep folder, and the probes are gone
        client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        experiment = client.get_experiment_by_name("sweeptest")
        assert experiment is None or not client.search_runs([experiment.experiment_id])
    finally:
        if node is not None:  # `ray start --block` and the node's processes, in the group it leads
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.wait(timeout=30)
        head.shutdown()
