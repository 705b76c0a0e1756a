"""Faults a long run meets, on real processes: the MLflow server going away and coming back, or not."""

import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT
from tests.test_sweep import free_port, wait_http

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


def start_server(tmp_path, port):
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_http(f"http://127.0.0.1:{port}/health", proc)
    return proc


def stop_server(proc):
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def train(tmp_path, uri, steps, outage_s):
    exp = tmp_path / "exp.yaml"
    exp.write_text(EXP.format(results=tmp_path / "results", steps=steps, outage_s=outage_s))
    return subprocess.Popen([sys.executable, "-m", "rlsweep.cli", "train", str(exp)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "platform"), "MLFLOW_TRACKING_URI": uri})


def logged_steps(uri):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("outage")
    runs = client.search_runs([exp.experiment_id]) if exp else []
    return runs, (client.get_metric_history(runs[0].info.run_id, "env_steps") if runs else [])


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
    steps = 512 * 60
    proc = train(tmp_path, uri, steps, outage_s=300)
    try:
        wait_for_steps(uri, proc, 3)
        stop_server(server)
        down_at = time.time()
        time.sleep(12)
        assert proc.poll() is None
        back_at = time.time()
        server = start_server(tmp_path, port)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        assert "MLflow store unreachable" in err and "reachable again" in err
        runs, history = logged_steps(uri)
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
        assert [m.step for m in history] == list(range(512, steps + 1, 512))  # every iteration, once
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
