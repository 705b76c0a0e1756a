"""What the tests share: the tiny experiment, the CLI runner with a clean environment, the stand-in
for Tune's trial objects, and the expensive fixtures (a local Ray, a real MLflow store, real MLflow
servers), each started once per session.

Layout: tests mirror the package (tests/ppo, tests/engine, tests/tuning, tests/tracking; the top-level
modules at the top), and tests/e2e holds the end-to-end tests, which run `rlsweep` as a user does, in
subprocesses.
"""

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def numpy_weights(obs_dim, act_dim, hidden=(8,), discrete=True, seed=0, agents=1):
    """Random policy weights of `agents` agents in `policy.Weights` layout (W (K, fan_in, fan_out),
    b (K, 1, fan_out), log_std (K, 1, act_dim)), without torch: for workers tested alone."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def mlp(out_dim):
        sizes = [obs_dim, *hidden, out_dim]
        layers = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [rng.normal(0, 1 / fan_in**0.5, (agents, fan_in, fan_out)).astype(np.float32),
                       np.zeros((agents, 1, fan_out), np.float32)]
        return layers

    w = {"actor": mlp(act_dim), "critic": mlp(1)}
    if not discrete:
        w["log_std"] = [np.zeros((agents, 1, act_dim), np.float32)]
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
    """A free loopback port that no process asking the kernel for any port takes meanwhile (a Ray's, on
    the other test worker): `stack.native.free_port`."""
    from rlsweep.stack.native import free_port as pick

    return pick()


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


# -- the team stack -------------------------------------------------------------------------------------

STACK_SECRETS = {"POSTGRES_PASSWORD": secrets.token_urlsafe(12), "S3_ACCESS_KEY_ID": "rlsweep-test",
                 "S3_SECRET_KEY": secrets.token_urlsafe(12), "RAY_AUTH_TOKEN": secrets.token_hex(16)}


@pytest.fixture(scope="session")
def stack():
    """The team stack of docker-compose.yml, up (`rlsweep stack up`, plain processes on loopback), once
    per session: its state (ports, pids) as `stack up` wrote it, and how long it took. Its tests share
    the xdist group "stack" (one worker starts it); they may restart a service, and leave it running."""
    # not under pytest's tmp folders: PostgreSQL runs as its own user, which cannot enter those (0700)
    directory = Path(tempfile.mkdtemp(prefix="rlsweep-stack-"))
    directory.chmod(0o755)
    env = cli_env(**STACK_SECRETS)
    t0 = time.monotonic()
    # the head's GCS declares a node dead after 3 missed health checks a second apart (Ray's defaults:
    # 5, three seconds apart), so that the node-loss test waits less
    up = rlsweep("stack", "up", "--dir", directory, "--cpus-per-node", 1, timeout=300,
                 env={**env, "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"})
    took = time.monotonic() - t0
    stack_port: list[str] = []
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        state = json.loads((directory / "stack.json").read_text())
        stack_port.append(state["ports"]["RAY_PORT"])
        yield {"state": state, "dir": directory, "env": env, "up": up, "took": took}
    finally:
        pids = [s["pid"] for s in json.loads((directory / "stack.json").read_text())["services"].values()] \
            if (directory / "stack.json").exists() else []
        down = rlsweep("stack", "down", "--dir", directory, env=env, timeout=120)
        gone = [pid for pid in pids if not Path(f"/proc/{pid}").exists() or
                Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"]
        shutil.rmtree(directory, ignore_errors=True)
        assert down.returncode == 0, down.stdout + down.stderr
        assert gone == pids, (pids, gone, down.stdout)
        note = Path("/tmp/ray/ray_current_cluster")  # the head's address, for a bare ray.init(): forgotten
        port = stack_port[0] if stack_port else None
        assert not (port and note.exists() and note.read_text().strip().endswith(f":{port}")), note.read_text()


def stack_bucket(stack, place: str) -> str:
    """A results_dir URI in the stack's bucket `results`."""
    return f"s3://results/{place}?endpoint_override=127.0.0.1:{stack['state']['ports']['S3_PORT']}&scheme=http"


def stack_s3_env() -> dict[str, str]:
    """The stack's S3 keys, as a driver takes them."""
    return {"AWS_ACCESS_KEY_ID": STACK_SECRETS["S3_ACCESS_KEY_ID"], "AWS_SECRET_ACCESS_KEY": STACK_SECRETS["S3_SECRET_KEY"]}


# -- running `rlsweep` as a user does ------------------------------------------------------------------


def cli_env(uri: str | None = None, test_envs: bool = False, **extra: str) -> dict[str, str]:
    """The environment of an `rlsweep` command under test: this checkout's code, and neither the
    user's MLflow store nor their Ray cluster (each test says which it uses: `uri`, or `RAY_ADDRESS`
    in `extra`). `test_envs`: the tests' own envs (tests.faulty_envs) importable, in the driver and
    in every Ray worker."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "platform") + (f":{ROOT}" if test_envs else "")}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
    env.update(extra)
    return env


RLSWEEP = [sys.executable, "-m", "rlsweep.cli"]


def rlsweep(*args: Any, uri: str | None = None, timeout: float = 600, env: dict[str, str] | None = None,
            cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """`rlsweep ARGS...` to its end, its output captured (`env`: from `cli_env`, default `cli_env(uri)`)."""
    return subprocess.run([*RLSWEEP, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=env or cli_env(uri))


def rlsweep_process(*args: Any, env: dict[str, str] | None = None, **popen: Any) -> subprocess.Popen:
    """`rlsweep ARGS...` started in a session of its own (so a test can signal it), output piped."""
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([*RLSWEEP, *map(str, args)], cwd=popen.pop("cwd", ROOT), env=env or cli_env(), text=True,
                            start_new_session=True, **popen)


def printed(out: str, key: str) -> float:
    """A metric from `rlsweep train`'s or `evaluate`'s closing lines."""
    return float(re.search(rf"^\s+{key}\s+(\S+)$", out, re.M).group(1))


def store_client(directory: Path, experiment: str, proc: subprocess.Popen, timeout: float = 300) -> Any:
    """An MlflowClient on the SQLite store that the running rlsweep `proc` makes in `directory`, once the
    process has made it and its experiment: a client opened earlier would run the store's migrations
    beside the process's own (two migrations of one new SQLite file fail)."""
    import sqlite3

    from mlflow.tracking import MlflowClient

    db = Path(directory) / "mlflow.db"
    deadline = time.time() + timeout
    while True:
        assert proc.poll() is None, f"the process ended (exit {proc.returncode}) before it made its store"
        assert time.time() < deadline, f"{db}: no experiment {experiment!r} after {timeout} s"
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
                if con.execute("SELECT count(*) FROM experiments WHERE name = ?", (experiment,)).fetchone()[0]:
                    return MlflowClient(f"sqlite:///{db}")
        except sqlite3.Error:  # not there yet, or half made
            pass
        time.sleep(0.05)


def runs_of(client: Any, experiment: str = "sweeptest") -> list[Any]:
    """Every run of an MLflow experiment."""
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000)


LR_ONLY = "ppo.lr: {type: loguniform, low: 1.0e-4, high: 3.0e-3}\n"  # a search space of one key


# -- a stand-in for Tune's trial objects -------------------------------------------------------------


@dataclass
class StandInCheckpoint:
    path: str


@dataclass
class StandInTrial:
    """What rlsweep's callbacks read of a `ray.tune.experiment.Trial`, for driving them in-process."""

    trial_id: str
    config: dict[str, Any]
    status: str = "RUNNING"
    last_result: dict[str, Any] = field(default_factory=dict)
    checkpoint: StandInCheckpoint | None = None
    error: str | None = None
    experiment_tag: str = ""

    def get_error(self):
        return RuntimeError(self.error) if self.error else None
