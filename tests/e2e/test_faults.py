"""Faults a long run meets, on real processes: the MLflow server going away and coming back, or not."""

import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import cli_env, free_port, rlsweep, rlsweep_process
from tests.conftest import start_mlflow_server as start_server
from tests.conftest import stop_mlflow_server as stop_server

EXP = """\
name: outage
seed: 4
results_dir: {results}
checkpoint_frequency: 2
env: {{id: CartPole-v1}}
policy: {{hidden_sizes: [16, 16]}}
ppo: {{train_batch_size: 512, minibatch_size: 32, num_epochs: 6}}
rollouts: {{num_rollout_workers: 0, num_envs_per_worker: 8}}
evaluation: {{interval: 0}}
stop: {{env_steps: {steps}}}
resources: {{learner_cpus: 1}}
sweep: {{metric: episode_return_mean}}
tracking: {{flush_s: 0, outage_s: {outage_s}, checkpoint_wait_s: 2}}
"""


def train(tmp_path, uri, steps, outage_s):
    exp = tmp_path / "exp.yaml"
    exp.write_text(EXP.format(results=tmp_path / "results", steps=steps, outage_s=outage_s))
    return rlsweep_process("train", exp, env=cli_env(uri))


def logged_steps(uri):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("outage")
    runs = client.search_runs([exp.experiment_id]) if exp else []
    return runs, (client.get_metric_history(runs[0].info.run_id, "rollouts/env_steps") if runs else [])


def wait_for_steps(uri, proc, n, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        try:
            if len(logged_steps(uri)[1]) >= n:
                return
        except Exception:  # the run may not exist yet
            pass
        time.sleep(0.2)
    raise TimeoutError(f"fewer than {n} iterations reached MLflow")


@pytest.mark.slow
def test_a_server_outage_mid_run_loses_nothing_and_does_not_stop_training(tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(tmp_path, port)
    steps = 512 * 40
    proc = train(tmp_path, uri, steps, outage_s=300)
    try:
        wait_for_steps(uri, proc, 3)
        stop_server(server)
        down_at = time.time()
        time.sleep(10)
        assert proc.poll() is None
        back_at = time.time()
        server = start_server(tmp_path, port)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        assert "MLflow store unreachable" in err and "reachable again" in err
        runs, history = logged_steps(uri)
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
        assert [m.step for m in history] == list(range(512, steps + 1, 512))  # every iteration, once
        [result_file] = (tmp_path / "results").glob("train-outage-*/trial_*/result.json")
        own = {r["env_steps"]: r["episode_return_mean"] for r in map(json.loads, result_file.read_text().splitlines())}
        client = MlflowClient(uri)
        logged = {m.step: m.value for m in client.get_metric_history(runs[0].info.run_id, "rollouts/episode_return_mean")}
        assert logged == pytest.approx(own)  # the trial's own results, value for value
        # training went on while the store was down: iterations were reported in that window (each
        # row carries the time the driver received it) and reached MLflow once it was back
        during = [m for m in history if down_at * 1000 < m.timestamp < back_at * 1000]
        assert len(during) >= 3, "training waited for the store"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        stop_server(server)


@pytest.mark.slow
def test_a_store_gone_for_good_ends_the_run_as_interrupted(tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(tmp_path, port)
    proc = train(tmp_path, uri, 512 * 400, outage_s=5)
    try:
        wait_for_steps(uri, proc, 3)
        stop_server(server)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted after" in err and "the MLflow store was unreachable for" in err, err[-3000:]
    assert "--restore" in err  # what to run once the store is back


@pytest.mark.slow
def test_credentials_work_and_leak_nowhere(tmp_path):
    """A password in the tracking URI and AWS keys in the environment: the run reaches the (real,
    loopback) server, and neither secret is printed, written under the results, logged to MLflow, or
    found in Ray's session folder (Tune would copy AWS keys into each trial actor's runtime env)."""
    port = free_port()
    server = start_server(tmp_path, port)
    exp = tmp_path / "exp.yaml"
    exp.write_text(EXP.format(results=tmp_path / "results", steps=1024, outage_s=30))
    ray_tmp = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))  # Ray's socket paths must stay short
    env = cli_env(AWS_SECRET_ACCESS_KEY="awsZ3cretK3y", AWS_ACCESS_KEY_ID="AKIAZZZZ", RAY_TMPDIR=str(ray_tmp))
    try:
        r = rlsweep("train", exp, "--set", f"tracking.uri=http://ann:pa55Zecret@127.0.0.1:{port}", env=env,
                    timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"at http://127.0.0.1:{port}" in r.stdout
        secrets = (b"pa55Zecret", b"awsZ3cretK3y")
        assert not any(s in (r.stdout + r.stderr).encode() for s in secrets)
        for root in (tmp_path / "results", ray_tmp):
            files = [p for p in root.rglob("*") if p.is_file()]
            assert files
            leaked = [str(p) for p in files for s in secrets if s in p.read_bytes()]
            assert not leaked, leaked
        client = MlflowClient(f"http://127.0.0.1:{port}")
        [run] = client.search_runs([client.get_experiment_by_name("outage").experiment_id])
        assert run.info.status == "FINISHED"
        assert run.data.params["tracking.uri"] == f"http://127.0.0.1:{port}"
        assert not any(b"pa55Zecret" in str(v).encode() for v in (*run.data.params.values(), *run.data.tags.values()))
    finally:
        stop_server(server)
        shutil.rmtree(ray_tmp, ignore_errors=True)


HANG_EXP = """\
name: hang
seed: 1
results_dir: {results}
max_failures: 0
env: {{id: "tests.faulty_envs:HangingCartPole", kwargs: {kwargs}}}
policy: {{hidden_sizes: [16, 16]}}
ppo: {{train_batch_size: 256, minibatch_size: 128, num_epochs: 2}}
rollouts: {{num_rollout_workers: {workers}, num_envs_per_worker: 4, sample_timeout_s: 3}}
evaluation: {{interval: 0}}
stop: {{env_steps: 1024}}
sweep: {{metric: episode_return_mean}}
resources: {{learner_cpus: 0.5, worker_cpus: 0.25, evaluation_cpus: 0.25}}
tracking: {{local_dir: {store}, flush_s: 0}}
"""


@pytest.mark.slow
@pytest.mark.parametrize("workers, hangs, fragment", [
    # a rollout worker whose env hangs: killed, replaced, its share sampled again; hangs again: the trial fails
    (1, "always", "rollout worker 0 (env tests.faulty_envs:HangingCartPole) did not answer within "
                  "rollouts.sample_timeout_s = 3 s, twice (replaced once)"),
    # in the trial's own process nothing can be replaced: the first time fails the trial
    (0, "always", "the in-process sampler (env tests.faulty_envs:HangingCartPole) did not answer within "
                  "rollouts.sample_timeout_s = 3 s (in the trial's process: it cannot be replaced)"),
    # an env that hangs once: its worker is replaced and the trial finishes
    (1, "once", None),
])
def test_an_env_that_never_returns_is_noticed(tmp_path, workers, hangs, fragment):
    kwargs = {"hang_after": 40} if hangs == "always" else {"hang_after": 40, "marker": str(tmp_path / "hung-once")}
    exp = tmp_path / "exp.yaml"
    exp.write_text(HANG_EXP.format(results=tmp_path / "results", store=tmp_path, workers=workers,
                                   kwargs=json.dumps(kwargs)))
    t0 = time.monotonic()
    r = rlsweep("train", exp, timeout=240, env=cli_env(test_envs=True))
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("hang").experiment_id])
    if fragment is None:
        assert r.returncode == 0, r.stderr[-3000:]
        assert run.info.status == "FINISHED" and run.data.metrics["system/workers_replaced"] == 1
        assert "rollout worker 0 (env tests.faulty_envs:HangingCartPole) did not answer within " \
            "rollouts.sample_timeout_s = 3 s: its env hangs or is far slower than expected; replacing it" in r.stderr, \
            r.stderr[-3000:]
        return
    assert r.returncode == 1, r.stderr[-3000:]
    failed = next(line for line in r.stdout.splitlines() if line.startswith("failed: "))
    assert fragment in failed, failed
    assert run.info.status == "FAILED" and fragment in run.data.tags["rlsweep.reason"]
    assert time.monotonic() - t0 < 120  # noticed in seconds, not waited on forever
