"""The team stack of docker-compose.yml, started for real without Docker (`rlsweep stack up`: each
service's own command line from the compose file, as plain processes on loopback): PostgreSQL, SeaweedFS's
S3, the MLflow server on PostgreSQL with its artifacts proxied into the bucket, a Ray head and a worker
node, with Ray's token authentication on. Started once for this module and stopped by pid."""

import json
import os
import secrets
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import LR_ONLY, cli_env, rlsweep, rlsweep_process

pytestmark = [pytest.mark.xdist_group("stack"), pytest.mark.slow]

SECRETS = {"POSTGRES_PASSWORD": secrets.token_urlsafe(12), "S3_ACCESS_KEY_ID": "rlsweep-test",
           "S3_SECRET_KEY": secrets.token_urlsafe(12), "RAY_AUTH_TOKEN": secrets.token_hex(16)}

# one CPU a node, a trial takes one (trainable, a rollout worker, evaluation, a learner actor): two
# trials at once need both nodes
EXP = """\
name: teamstack
seed: 4
results_dir: {results}
checkpoint_frequency: 2
max_failures: 3
env: {{id: CartPole-v1}}
policy: {{hidden_sizes: [16, 16]}}
ppo: {{train_batch_size: 512, minibatch_size: 128, num_epochs: 4}}
rollouts: {{num_rollout_workers: 1, num_envs_per_worker: 8}}
learners: {{num_learners: 1, cpus_per_learner: 0.25}}
evaluation: {{interval: 1, episodes: 2}}
stop: {{env_steps: 10240}}
resources: {{learner_cpus: 0.25, worker_cpus: 0.25, evaluation_cpus: 0.25}}
sweep: {{trials: 2, max_concurrent: 2, n_startup_trials: 2, seed: 3}}
"""


@pytest.fixture(scope="module")
def stack():
    """The stack, up: its state (ports, pids) as `rlsweep stack up` wrote it, and how long it took."""
    # not under pytest's tmp folders: PostgreSQL runs as its own user, which cannot enter those (0700)
    directory = Path(tempfile.mkdtemp(prefix="rlsweep-stack-"))
    directory.chmod(0o755)
    env = cli_env(**SECRETS)
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


def _check_the_stack_as_started(stack) -> None:
    """`stack up` said where each service is, `stack status` finds each running, no secret in either
    or in the state file, and each service runs what the compose file says."""
    state, out = stack["state"], stack["up"].stdout
    assert set(state["services"]) == {"postgres", "s3", "mlflow", "ray-head", "ray-worker-1"}, out
    assert "MLflow (UI and tracking)  http://127.0.0.1:" in out and "Ray cluster (its head)    127.0.0.1:" in out
    status = rlsweep("stack", "status", "--dir", stack["dir"], env=stack["env"])
    assert status.returncode == 0 and status.stdout.count(" running ") == 5, status.stdout + status.stderr
    written = (stack["dir"] / "stack.json").read_text() + out + status.stdout
    for value in SECRETS.values():
        assert value not in written
    # each service runs what the compose file says (here: the MLflow server on PostgreSQL, via psycopg2)
    cmdline = Path(f"/proc/{state['services']['mlflow']['pid']}/cmdline").read_bytes().decode().split("\0")
    assert "server" in cmdline and any(a.startswith("postgresql+psycopg2://mlflow:") for a in cmdline), cmdline


def placed_on(run) -> set[str]:
    tag = run.data.tags.get("rlsweep.placement", "")
    return {node for part in tag.split() for node in part.split("=", 1)[1].split(",")}


def test_a_sweep_through_the_stack_survives_its_faults_and_lands_in_postgres_and_the_bucket(stack, tmp_path):
    """One sweep through the stack (`--address` on its Ray, its MLflow server as the store), and during
    it three faults of the stack in turn: PostgreSQL restarted, the MLflow server restarted, the worker
    node SIGKILLed (its raylet and every process on it). The sweep finishes with every run whole (each
    step logged once, what ran on the lost node going on from its checkpoint); runs and metrics are in
    PostgreSQL, checkpoints and plots in the bucket, and the trials ran on both nodes."""
    import boto3
    import psycopg2
    from mlflow.tracking import MlflowClient

    _check_the_stack_as_started(stack)  # (one test: a module's fixture may be set up again per test)
    ports, env = stack["state"]["ports"], stack["env"]
    tracking = f"http://127.0.0.1:{ports['MLFLOW_PORT']}"
    steps = 10240
    exp = tmp_path / "exp.yaml"
    exp.write_text(EXP.format(results=tmp_path / "results"))
    (tmp_path / "space.yaml").write_text(LR_ONLY)
    # a driver as a user runs it: the stack's addresses and its Ray token, nothing else
    proc = rlsweep_process("sweep", exp, "--space", tmp_path / "space.yaml", "--name", "through-the-stack",
                           "--address", f"127.0.0.1:{ports['RAY_PORT']}",
                           env=cli_env(uri=tracking, RAY_AUTH_TOKEN=SECRETS["RAY_AUTH_TOKEN"]))
    client = MlflowClient(tracking)
    seen: set[str] = set()  # the nodes the trials' processes ran on (a restarted trial's tag is rewritten)

    def results() -> list[int]:
        """Results each trial has reported so far (Tune's driver-side log: at once, whatever MLflow's
        state); the trials' placements are noted from MLflow on the way, while it answers."""
        try:
            experiment = client.get_experiment_by_name("teamstack")
            for r in client.search_runs([experiment.experiment_id], "tags.`rlsweep.kind` = 'trial'") if experiment else []:
                seen.update(placed_on(r))
        except Exception:
            pass
        logs = (tmp_path / "results" / "through-the-stack").glob("trial_*/result.json")
        return [len(f.read_text().splitlines()) for f in logs]

    def wait_for(rows: int, trials: int = 1) -> None:
        deadline = time.monotonic() + 240
        while sum(c >= rows for c in results()) < trials:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, f"no {trials} trials reported {rows} results"
            time.sleep(0.2)

    def restart(service: str) -> None:
        assert proc.poll() is None, "the sweep ended before the fault"  # the fault lands mid-sweep
        r = rlsweep("stack", "restart", service, "--dir", stack["dir"], env=env, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr

    worker = stack["state"]["services"]["ray-worker-1"]["pid"]
    try:
        wait_for(2, trials=2)  # both trials going: both one-CPU nodes busy
        os.killpg(worker, signal.SIGKILL)  # the node: `ray start`, its raylet and every worker process on it
        done = max(results())
        wait_for(done + 1)  # going on without it (its trials one at a time on the head)
        restart("postgres")
        wait_for(done + 3)
        restart("mlflow")
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:] + err[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        # the node back, for whatever runs next on the stack
        back = rlsweep("stack", "restart", "ray-worker-1", "--dir", stack["dir"], env=env, timeout=120)
        assert back.returncode == 0, back.stdout + back.stderr
    assert "View run" not in out  # MLflow's own links: rlsweep prints its own
    assert not any(v in out + err for v in SECRETS.values())

    # every run whole, each step once, across the restarts and the lost node
    experiment = client.get_experiment_by_name("teamstack")
    runs = client.search_runs([experiment.experiment_id])
    [parent] = [r for r in runs if r.info.run_name == "through-the-stack"]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED"
    assert len(trials) == 2 and all(t.info.status == "FINISHED" for t in trials), [(t.info.run_name, t.info.status) for t in trials]
    for t in trials:
        for key in ("rollouts/env_steps", "evaluation/eval_return_mean"):
            logged_steps = [m.step for m in client.get_metric_history(t.info.run_id, key)]
            assert sorted(logged_steps) == list(range(512, steps + 1, 512)), (t.info.run_name, key, logged_steps)
        flat = json.dumps([t.data.params, t.data.tags])
        assert not any(v in flat for v in SECRETS.values())
    # what ran on the lost node went on: a trial restarted from its checkpoint, or a rollout actor replaced
    retried = [t for t in trials if int(t.data.tags.get("rlsweep.retries", "0")) >= 1]
    replaced = [t for t in trials if t.data.metrics.get("system/workers_replaced", 0) >= 1]
    assert retried or replaced, [(t.data.tags, t.data.metrics) for t in trials]
    for t in retried:  # (Ray's words: the node's loss, or the actor that became unavailable with it)
        assert t.data.tags.get("rlsweep.retry_reason"), t.data.tags
    assert len(seen) == 2, seen  # the trials' processes ran on both of the stack's nodes

    # runs and metrics in PostgreSQL itself
    with psycopg2.connect(host="127.0.0.1", port=int(ports["POSTGRES_PORT"]), user="mlflow", dbname="mlflow",
                          password=SECRETS["POSTGRES_PASSWORD"]) as db, db.cursor() as cur:
        cur.execute("SELECT r.run_uuid, r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                    "WHERE t.key = 'mlflow.parentRunId' AND t.value = %s", (parent.info.run_id,))
        in_db = dict(cur.fetchall())
        cur.execute("SELECT count(DISTINCT (run_uuid, step)) FROM metrics WHERE key = 'rollouts/env_steps' AND run_uuid = ANY(%s)",
                    (list(in_db),))
        [(rows,)] = cur.fetchall()
    assert in_db == {t.info.run_id: "FINISHED" for t in trials} and rows == 2 * steps // 512, (in_db, rows)

    # checkpoints and plots in the bucket itself
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{ports['S3_PORT']}", region_name="us-east-1",
                      aws_access_key_id=SECRETS["S3_ACCESS_KEY_ID"], aws_secret_access_key=SECRETS["S3_SECRET_KEY"])
    keys = {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="mlflow")
            for o in page.get("Contents", [])}

    def objects(run_id: str) -> set[str]:
        return {k.split(f"/{run_id}/artifacts/", 1)[1] for k in keys if f"/{run_id}/artifacts/" in k}

    for t in trials:
        assert {"checkpoints/final/learner.pt", "checkpoints/best/learner.pt", "config.yaml"} <= objects(t.info.run_id)
    assert {"learning_curves.png", "results.csv", "best_config.yaml"} <= objects(parent.info.run_id)
