"""The team stack of docker-compose.yml, started for real without Docker (`rlsweep stack up`: each
service's own command line from the compose file, as plain processes on loopback): PostgreSQL, SeaweedFS's
S3, the MLflow server on PostgreSQL with its artifacts proxied into the bucket, a Ray head and a worker
node, with Ray's token authentication on. Started once for this module and stopped by pid."""

import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.conftest import LR_ONLY, cli_env, rlsweep, rlsweep_process, stack_bucket, stack_s3_env
from tests.conftest import STACK_SECRETS as SECRETS

pytestmark = [pytest.mark.xdist_group("stack"), pytest.mark.slow]

# one CPU a node, a trial takes one (trainable, a rollout worker, evaluation, a learner actor): two
# trials at once need both nodes
EXP = """\
name: teamstack
seed: 4
results_dir: '{results}'
checkpoint_frequency: 2
max_failures: 3
env: {{id: CartPole-v1}}
policy: {{hidden_sizes: [16, 16]}}
ppo: {{train_batch_size: 512, minibatch_size: 128, num_epochs: 4}}
rollouts: {{num_rollout_workers: 1, num_envs_per_worker: 8}}
learners: {{num_learners: 1, cpus_per_learner: 0.25}}
evaluation: {{interval: 1, episodes: 2}}
stop: {{env_steps: {steps}}}
resources: {{learner_cpus: 0.25, worker_cpus: 0.25, evaluation_cpus: 0.25}}
sweep: {{trials: 2, max_concurrent: 2, n_startup_trials: 2, seed: 3}}
"""


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
    """One sweep through the stack (`--address` on its Ray, its MLflow server as the store, its results
    in the bucket: `results_dir: s3://...`, no disk shared), and during it three faults of the stack in
    turn: the worker node SIGKILLed (its raylet and every process on it), PostgreSQL restarted, the MLflow
    server restarted. The sweep finishes with every run whole (each step logged once, what ran on the
    lost node going on from its checkpoint in the bucket); runs and metrics are in PostgreSQL;
    checkpoints, Tune's state and the signed manifest in the bucket, MLflow's checkpoints and plots too;
    the trials ran on both nodes; `rlsweep best` works from the bucket alone."""
    import boto3
    import psycopg2
    from mlflow.tracking import MlflowClient

    _check_the_stack_as_started(stack)  # (one test: a module's fixture may be set up again per test)
    ports, env = stack["state"]["ports"], stack["env"]
    tracking = f"http://127.0.0.1:{ports['MLFLOW_PORT']}"
    # long enough that both trials still run once both have begun: under load the second trial's actors
    # can take 10 s to start, while the first runs on (CI saw one finish before the other began)
    steps = 20480
    exp = tmp_path / "exp.yaml"
    results_dir = stack_bucket(stack, "sweeps")
    exp.write_text(EXP.format(results=results_dir, steps=steps))
    (tmp_path / "space.yaml").write_text(LR_ONLY)
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{ports['S3_PORT']}", region_name="us-east-1",
                      aws_access_key_id=SECRETS["S3_ACCESS_KEY_ID"], aws_secret_access_key=SECRETS["S3_SECRET_KEY"])

    def keys(bucket: str, prefix: str = "") -> set[str]:
        try:
            return {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
                    for o in page.get("Contents", [])}
        except s3.exceptions.NoSuchBucket:  # (made by the sweep's first upload)
            return set()

    # a driver as a user runs it: the stack's addresses, its Ray token and its S3 keys, nothing else
    proc = rlsweep_process("sweep", exp, "--space", tmp_path / "space.yaml", "--name", "through-the-stack",
                           "--address", f"127.0.0.1:{ports['RAY_PORT']}",
                           env=cli_env(uri=tracking, RAY_AUTH_TOKEN=SECRETS["RAY_AUTH_TOKEN"], **stack_s3_env(),
                                       XDG_CACHE_HOME=str(tmp_path / "driver-cache")))
    client = MlflowClient(tracking)
    seen: set[str] = set()  # the nodes the trials' processes ran on (a restarted trial's tag is rewritten)

    def results() -> list[int]:
        """Results each trial has reported so far (Tune's result logs in the bucket, a second behind:
        whatever MLflow's state); the trials' placements are noted from MLflow on the way, while it
        answers."""
        try:
            experiment = client.get_experiment_by_name("teamstack")
            for r in client.search_runs([experiment.experiment_id], "tags.`rlsweep.kind` = 'trial'") if experiment else []:
                seen.update(placed_on(r))
        except Exception:
            pass
        logs = [k for k in keys("results", "sweeps/through-the-stack/trial_") if k.endswith("/result.json")]
        return [len(s3.get_object(Bucket="results", Key=k)["Body"].read().splitlines()) for k in logs]

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

    # MLflow's checkpoints and plots in the bucket itself
    artifacts = keys("mlflow")

    def objects(run_id: str) -> set[str]:
        return {k.split(f"/{run_id}/artifacts/", 1)[1] for k in artifacts if f"/{run_id}/artifacts/" in k}

    for t in trials:
        assert {"checkpoints/final/learner.pt", "checkpoints/best/learner.pt", "config.yaml"} <= objects(t.info.run_id)
    assert {"learning_curves.png", "results.csv", "best_config.yaml"} <= objects(parent.info.run_id)

    # the sweep itself in the bucket: Tune's state, the signed manifest, the study, each trial's checkpoints
    # (written from the node it ran on); no secret in any of it
    sweep = {k.removeprefix("sweeps/through-the-stack/") for k in keys("results", "sweeps/through-the-stack/")}
    assert {"tuner.pkl", ".rlsweep_manifest.json", "rlsweep_sweep.json", "optuna.db"} <= sweep, sorted(sweep)
    assert any(k.startswith("experiment_state-") for k in sweep), sorted(sweep)
    for t in trials:
        tid = t.data.tags["rlsweep.trial_id"]
        assert any(k.startswith(f"trial_{tid}/checkpoint_") and k.endswith("/learner.pt") for k in sweep), sorted(sweep)
    for key in ("tuner.pkl", "rlsweep_sweep.json", next(k for k in sweep if k.startswith("experiment_state-"))):
        data = s3.get_object(Bucket="results", Key=f"sweeps/through-the-stack/{key}")["Body"].read()
        assert not any(v.encode() in data for v in SECRETS.values()), key
    # `rlsweep best` from the bucket alone (another machine: nothing of the sweep on its disk)
    elsewhere = tmp_path / "another-machine"
    best = rlsweep("best", "through-the-stack", "--results-dir", results_dir,
                   env=cli_env(**stack_s3_env(), XDG_CACHE_HOME=str(elsewhere)))
    assert best.returncode == 0, best.stdout + best.stderr
    assert "name: through-the-stack-best" in best.stdout and str(elsewhere) in best.stdout + best.stderr


RESUMED = """\
name: inthebucket
seed: 5
results_dir: '{results}'
checkpoint_frequency: 2
env: {{id: CartPole-v1}}
policy: {{hidden_sizes: [16, 16]}}
ppo: {{train_batch_size: 512, minibatch_size: 128, num_epochs: 4}}
rollouts: {{num_rollout_workers: 1, num_envs_per_worker: 8}}
evaluation: {{interval: 2, episodes: 2}}
stop: {{env_steps: 8192}}
sweep: {{trials: 1, n_startup_trials: 1, seed: 3}}
tracking: {{local_dir: '{store}'}}
"""


def test_a_sweep_in_the_bucket_resumes_from_it_on_another_machine(stack, tmp_path, monkeypatch):
    """Results in the stack's bucket, on a Ray of the driver's own: the driver (and its Ray) is SIGKILLed
    once a checkpoint is in the bucket, as a machine is lost; `rlsweep resume` by a driver with nothing
    of the sweep on its disk (a cache folder of its own) pulls it from the bucket, verifies what Tune
    will unpickle, and finishes it, every step logged once."""
    from mlflow.tracking import MlflowClient

    results_dir = stack_bucket(stack, "resumed")
    exp = tmp_path / "exp.yaml"
    exp.write_text(RESUMED.format(results=results_dir, store=tmp_path))
    (tmp_path / "space.yaml").write_text(LR_ONLY)
    import pyarrow.fs

    env = cli_env(**stack_s3_env(), XDG_CACHE_HOME=str(tmp_path / "first-machine"))
    for k, v in stack_s3_env().items():  # (this test reads the bucket too)
        monkeypatch.setenv(k, v)
    fs, path = pyarrow.fs.FileSystem.from_uri(results_dir)
    proc = rlsweep_process("sweep", exp, "--space", tmp_path / "space.yaml", "--name", "cut", env=env)
    try:
        deadline = time.monotonic() + 240
        selector = pyarrow.fs.FileSelector(f"{path}/cut", recursive=True, allow_not_found=True)
        while not any(i.path.endswith("/checkpoint_000001/learner.pt") for i in fs.get_file_info(selector)):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint reached the bucket"
            time.sleep(0.2)
        # a second driver elsewhere, while this one runs: refused by the sweep's lease in the bucket,
        # before it touches anything
        second = rlsweep("resume", "cut", "--results-dir", results_dir,
                         env=cli_env(**stack_s3_env(), XDG_CACHE_HOME=str(tmp_path / "meanwhile")))
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"sweep cut is running on {socket.gethostname()} in process {proc.pid} (its lease in " \
            "s3://results/resumed/cut was renewed" in second.stderr, second.stderr
        assert proc.poll() is None
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=60)

    resumed = rlsweep("resume", "cut", "--results-dir", results_dir,
                      env=cli_env(**stack_s3_env(), XDG_CACHE_HOME=str(tmp_path / "second-machine")))
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert "sweep cut done: 1 trials finished" in resumed.stdout, resumed.stdout
    assert "rlsweep resume 's3://results/resumed/cut?endpoint_override=" not in resumed.stderr
    assert str(tmp_path / "second-machine") in resumed.stdout  # the best checkpoint, pulled there
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [trial] = [r for r in client.search_runs([client.get_experiment_by_name("inthebucket").experiment_id])
               if r.data.tags.get("rlsweep.kind") == "trial"]
    assert trial.info.status == "FINISHED", trial.data.tags
    steps = [m.step for m in client.get_metric_history(trial.info.run_id, "rollouts/env_steps")]
    assert sorted(steps) == list(range(512, 8193, 512)), steps
    assert not any(v in resumed.stdout + resumed.stderr + out + err for v in SECRETS.values())
