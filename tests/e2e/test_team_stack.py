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
env: {{id: CartPole-v1}}
policy: {{hidden_sizes: [16, 16]}}
ppo: {{train_batch_size: 512, minibatch_size: 128, num_epochs: 4}}
rollouts: {{num_rollout_workers: 1, num_envs_per_worker: 8}}
learners: {{num_learners: 1, cpus_per_learner: 0.25}}
evaluation: {{interval: 1, episodes: 2}}
stop: {{env_steps: 2048}}
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
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        state = json.loads((directory / "stack.json").read_text())
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


def test_the_stack_starts_from_the_compose_file_and_keeps_secrets_out_of_its_files(stack):
    state, out = stack["state"], stack["up"].stdout
    print(f"stack up in {stack['took']:.1f} s:\n{out}")
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


def test_a_sweep_through_the_team_stack_lands_in_postgres_and_the_bucket_on_both_nodes(stack, tmp_path):
    import boto3
    import psycopg2
    from mlflow.tracking import MlflowClient

    ports = stack["state"]["ports"]
    tracking = f"http://127.0.0.1:{ports['MLFLOW_PORT']}"
    exp = tmp_path / "exp.yaml"
    exp.write_text(EXP.format(results=tmp_path / "results"))
    (tmp_path / "space.yaml").write_text(LR_ONLY)
    # a driver as a user runs it: the stack's addresses and its Ray token, nothing else
    env = cli_env(uri=tracking, RAY_AUTH_TOKEN=SECRETS["RAY_AUTH_TOKEN"])
    r = rlsweep("sweep", exp, "--space", tmp_path / "space.yaml", "--name", "through-the-stack",
                "--address", f"127.0.0.1:{ports['RAY_PORT']}", env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "View run" not in r.stdout  # MLflow's own links: rlsweep prints its own

    with psycopg2.connect(host="127.0.0.1", port=int(ports["POSTGRES_PORT"]), user="mlflow", dbname="mlflow",
                          password=SECRETS["POSTGRES_PASSWORD"]) as db, db.cursor() as cur:
        cur.execute("SELECT r.run_uuid, r.status, t.value FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                    "WHERE t.key = 'rlsweep.kind'")
        runs = {uuid: (status, kind) for uuid, status, kind in cur.fetchall()}
        cur.execute("SELECT count(*) FROM metrics WHERE key = 'eval_return_mean'")
        [(evals,)] = cur.fetchall()
    assert sorted(k for _, k in runs.values()) == ["sweep", "trial", "trial"], runs
    assert all(s == "FINISHED" for s, _ in runs.values()), runs
    assert evals >= 2 * 4, evals  # four iterations a trial

    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{ports['S3_PORT']}", region_name="us-east-1",
                      aws_access_key_id=SECRETS["S3_ACCESS_KEY_ID"], aws_secret_access_key=SECRETS["S3_SECRET_KEY"])
    keys = {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="mlflow")
            for o in page.get("Contents", [])}
    for uuid, (_, kind) in runs.items():
        mine = {k.split(f"/{uuid}/artifacts/", 1)[1] for k in keys if f"/{uuid}/artifacts/" in k}
        if kind == "trial":
            assert {"checkpoints/final/learner.pt", "checkpoints/best/learner.pt", "config.yaml"} <= mine, mine
        else:
            assert {"learning_curves.png", "results.csv", "best_config.yaml"} <= mine, mine

    client = MlflowClient(tracking)
    seen = set()
    for uuid, (_, kind) in runs.items():
        run = client.get_run(uuid)
        if kind == "trial":
            seen |= {n for part in run.data.tags["rlsweep.placement"].split() for n in part.split("=", 1)[1].split(",")}
        flat = json.dumps([run.data.params, run.data.tags])
        assert not any(v in flat for v in SECRETS.values())
    assert len(seen) == 2, seen  # the trials' processes ran on both of the stack's nodes
    assert not any(v in r.stdout + r.stderr for v in SECRETS.values())


def test_postgres_and_the_mlflow_server_restarted_and_the_worker_node_killed_mid_sweep_lose_nothing(stack, tmp_path):
    """One sweep, three faults of the stack in turn: PostgreSQL restarted, the MLflow server restarted,
    the worker node SIGKILLed (its raylet and every process on it). The sweep finishes with every run
    whole: each step logged once, the trials on the lost node restarted from their checkpoints."""
    from mlflow.tracking import MlflowClient

    ports, env = stack["state"]["ports"], stack["env"]
    tracking = f"http://127.0.0.1:{ports['MLFLOW_PORT']}"
    steps = 512 * 24
    exp = tmp_path / "exp.yaml"
    exp.write_text(EXP.format(results=tmp_path / "results").replace("env_steps: 2048", f"env_steps: {steps}")
                   .replace("checkpoint_frequency: 2", "checkpoint_frequency: 2\nmax_failures: 3"))
    (tmp_path / "space.yaml").write_text(LR_ONLY)
    proc = rlsweep_process("sweep", exp, "--space", tmp_path / "space.yaml", "--name", "faults",
                           "--address", f"127.0.0.1:{ports['RAY_PORT']}",
                           env=cli_env(uri=tracking, RAY_AUTH_TOKEN=SECRETS["RAY_AUTH_TOKEN"]))
    client = MlflowClient(tracking)

    def logged() -> int:
        """The most env_steps rows a trial has in MLflow so far (0 while the store cannot answer)."""
        try:
            experiment = client.get_experiment_by_name("teamstack")
            runs = client.search_runs([experiment.experiment_id], "tags.`rlsweep.kind` = 'trial'") if experiment else []
            return max((len(client.get_metric_history(r.info.run_id, "env_steps")) for r in runs), default=0)
        except Exception:
            return 0

    def wait_for(rows: int) -> None:
        deadline = time.monotonic() + 240
        while logged() < rows:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, f"no trial logged {rows} rows"
            time.sleep(0.2)

    worker = stack["state"]["services"]["ray-worker-1"]["pid"]
    try:
        wait_for(2)
        r = rlsweep("stack", "restart", "postgres", "--dir", stack["dir"], env=env, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        wait_for(5)
        r = rlsweep("stack", "restart", "mlflow", "--dir", stack["dir"], env=env, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        wait_for(8)
        os.killpg(worker, signal.SIGKILL)  # the node: `ray start`, its raylet and every worker process on it
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:] + err[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        # the node back, for whatever runs next on the stack
        back = rlsweep("stack", "restart", "ray-worker-1", "--dir", stack["dir"], env=env, timeout=120)
        assert back.returncode == 0, back.stdout + back.stderr

    experiment = client.get_experiment_by_name("teamstack")
    runs = client.search_runs([experiment.experiment_id])
    [parent] = [r for r in runs if r.info.run_name == "faults"]
    assert parent.info.status == "FINISHED"
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(trials) == 2 and all(t.info.status == "FINISHED" for t in trials), [(t.info.run_name, t.info.status) for t in trials]
    for t in trials:
        for key in ("env_steps", "eval_return_mean"):
            logged_steps = [m.step for m in client.get_metric_history(t.info.run_id, key)]
            assert sorted(logged_steps) == list(range(512, steps + 1, 512)), (t.info.run_name, key, logged_steps)
    retried = [t for t in trials if int(t.data.tags.get("rlsweep.retries", "0")) >= 1]
    assert retried, [t.data.tags for t in trials]  # the lost node's trial went on from its checkpoint
    assert "node" in retried[0].data.tags.get("rlsweep.retry_reason", ""), retried[0].data.tags  # named as such
