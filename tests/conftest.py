import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# the tests' own signing key for sweep directories (integrity.py), not the user's
os.environ["RLSWEEP_KEY_FILE"] = str(Path(os.environ.get("TMPDIR", "/tmp")) / f"rlsweep-test-key-{os.getpid()}")


def pytest_collection_modifyitems(config, items):
    """Long tests first (a stable sort): with `make test`'s two pytest-xdist workers, the suite then
    ends on short tests instead of one worker finishing a long one alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the in-process trainable tests (2 CPUs, like the smallest machine); its own
    even where a cluster of another test runs on this machine (a bare ray.init() would join that)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def small_config(env_id="CartPole-v1", workers=1, **sections):
    """A tiny experiment dict: 4 envs per worker, 16-step fragments."""
    from rlsweep.config import validate

    cfg = {
        "name": "test",
        "seed": 3,
        "env": {"id": env_id},
        "policy": {"hidden_sizes": [16, 16]},
        "ppo": {"train_batch_size": 64 * max(1, workers), "minibatch_size": 32, "num_epochs": 2, "lr": 1e-3},
        "rollouts": {"num_rollout_workers": workers, "num_envs_per_worker": 4},
        "evaluation": {"interval": 2, "episodes": 3},
        "stop": {"env_steps": 1000},
        "resources": {"worker_cpus": 0.25, "evaluation_cpus": 0.25, "learner_cpus": 0.5},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    return validate(cfg).model_dump(mode="json")


def numpy_weights(obs_dim, act_dim, hidden=(8,), discrete=True, seed=0):
    """Random policy weights in `policy.Weights` layout, without torch: for workers tested alone."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def mlp(out_dim):
        sizes = [obs_dim, *hidden, out_dim]
        layers = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [rng.normal(0, 1 / fan_in**0.5, (fan_out, fan_in)).astype(np.float32),
                       np.zeros(fan_out, np.float32)]
        return layers

    w = {"actor": mlp(act_dim), "critic": mlp(1)}
    if not discrete:
        w["log_std"] = [np.zeros(act_dim, np.float32)]
    return w


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory):
    """One real SQLite MLflow store for the tracking tests (creating one takes seconds); each test
    uses an experiment of its own."""
    from rlsweep.tracking.store import Store

    d = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{d / 'mlflow.db'}"
    Store(uri, "warm-up", (d / "artifacts").as_uri()).tracker()  # runs the migrations once
    return uri, (d / "artifacts").as_uri()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, proc, seconds=90):
    deadline = time.time() + seconds
    while time.time() < deadline:
        assert proc.poll() is None, "server exited"
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(url)


def start_mlflow_server(directory: Path, port: int) -> subprocess.Popen:
    """A real `mlflow server` on loopback, its SQLite store and artifacts in `directory`, in a process
    group of its own; returns once it answers. MLflow's job runner stays off: a dozen processes this
    suite does not use, one of which outlived the server's SIGTERM."""
    db = directory / "server.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{db}", "--artifacts-destination", str(directory / "server-artifacts"),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    wait_http(f"http://127.0.0.1:{port}/health", proc)
    return proc


def stop_mlflow_server(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
