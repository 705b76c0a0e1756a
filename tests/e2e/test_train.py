"""`rlsweep train` as a user runs it: a real subprocess, real Ray, real gymnasium."""

import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import RLSWEEP, ROOT, cli_env, printed, rlsweep, rlsweep_process, store_client

EXP = """\
name: clitest
seed: 1
results_dir: {results}
env: {{id: CartPole-v1}}
policy: {{hidden_sizes: [16, 16]}}
ppo: {{train_batch_size: 256, minibatch_size: 128, num_epochs: 2}}
rollouts: {{num_rollout_workers: 1, num_envs_per_worker: 8}}
evaluation: {{interval: 2, episodes: 3}}
stop: {{env_steps: 1024}}
resources: {{learner_cpus: 0.5, worker_cpus: 0.25, evaluation_cpus: 0.25}}
tracking: {{local_dir: {store}}}
"""


@pytest.fixture
def exp(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text(EXP.format(results=tmp_path / "results", store=tmp_path))
    return p


@pytest.mark.parametrize("args,fragment", [
    (["--set", "ppo.gamma=2"], "key 'ppo.gamma': Input should be less than or equal to 1 (got 2)"),
    (["--set", "stop.nope=1"], "unknown key 'stop.nope'"),
    (["--set", "env.id=NoSuchEnv-v9"], "key 'env.id': 'NoSuchEnv-v9' is not a registered"),
    (["--set", "ppo.minibatch_size=100"], "minibatch_size (100) must divide train_batch_size (256)"),
    (["--restore", "/nonexistent/ckpt"], "checkpoint /nonexistent/ckpt: no such checkpoint directory"),
    (["--set", "ppo.lr=.inf"], "key 'ppo.lr': Input should be a finite number (got inf)"),
    (["--set", "ppo.ent_coef=.nan"], "key 'ppo.ent_coef': Input should be a finite number (got nan)"),
    (["--set", "ppo.train_batch_size=100000000000"], "key 'ppo.train_batch_size': Input should be less than or equal"),
    (["--set", "policy.hidden_sizes=[100000000]"], "layer widths up to 65536"),
    (["--set", "results_dir=gs://bucket/runs"], "key 'results_dir': a folder or an s3:// URI expected: for another object store"),
    (["--set", "results_dir=s3://bucket/runs?access_key=AKIDEXAMPLE"],
     "key 'results_dir': access_key must not be in the URI"),
    (["--set", "results_dir=s3://bucket/runs?endpoint_override=127.0.0.1:1&scheme=http"],
     "results_dir s3://bucket/runs: cannot write there ("),
    (["--seed", "-1"], "--seed -1: expected a whole number from 0 to 2147483647"),
    (["--seeds", "0"], "--seeds 0: expected a whole number from 1 to 64"),
    (["--set", "seed=2147483648"], "key 'seed': Input should be less than or equal to 2147483647"),
    (["--set", "resources.learner_cpus=100000"],
     "a trial asks for 100000.5 CPUs (resources.learner_cpus 100000 + rollouts.num_rollout_workers 1 x "
     "resources.worker_cpus 0.25 + resources.evaluation_cpus 0.25) but this machine"),
])
def test_bad_input_is_one_line_and_exit_2_before_ray(exp, tmp_path, args, fragment):
    r = rlsweep("train", exp, *args, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rlsweep: error: ") and fragment in lines[0], r.stderr
    assert not (tmp_path / "results").exists()  # nothing was created: Ray never started
    assert not (tmp_path / "mlflow.db").exists()


def test_a_checkpoint_of_three_agents_restores_with_seeds_3_only(exp, tmp_path):
    """`train` trains one agent whatever the file's sweep section says; a checkpoint of 3 agents is refused
    without `--seeds 3` (one line, before Ray), and with it the three agents go on from it."""
    from rlsweep.config import load_experiment
    from rlsweep.engine.training import Training
    from rlsweep.engine.workers import LocalWorkers
    from rlsweep.ppo import checkpoint

    exp.write_text(exp.read_text() + "sweep: {seeds_per_trial: 3}\n")  # for sweeps only
    cfg = load_experiment(exp, ["rollouts.num_rollout_workers=0"])
    assert cfg.agent_seeds == [1, 2, 3]
    t = Training(cfg, LocalWorkers(cfg))
    t.iterate()
    checkpoint.write(tmp_path / "ckpt", *t.state())
    t.close()
    r = rlsweep("train", exp, "--restore", tmp_path / "ckpt", timeout=60)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"rlsweep: error: --restore {tmp_path / 'ckpt'}: checkpoint holds 3 agent(s) (seeds [1, 2, 3]), this "
        "run would train 1: add --seeds 3"], r.stderr
    assert not (tmp_path / "results").exists()
    r = rlsweep("train", exp, "--restore", tmp_path / "ckpt", "--seeds", "3", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "eval_return_mean/seed_3" not in r.stdout and re.search(r"eval_return_mean\s+\S+ \[", r.stdout), r.stdout
    assert printed(r.stdout, "env_steps") == 1024


def test_a_results_dir_that_cannot_hold_results_is_one_line_before_anything_starts(exp, tmp_path):
    """`train` checks results_dir as `sweep` does: a file, a folder under a file, a read-only
    filesystem (a real read-only bind mount, in a mount namespace of its own)."""
    import os

    (tmp_path / "a-file").write_text("")
    for where, fragment in ((tmp_path / "a-file", "is a file, expected a folder"),
                            (tmp_path / "a-file" / "sub", f"is under {tmp_path / 'a-file'}, a file")):
        r = rlsweep("train", exp, "--set", f"results_dir={where}", timeout=60)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and fragment in lines[0], r.stderr
    ro = tmp_path / "ro"
    ro.mkdir()
    unshare = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--mount"]
    script = (f"mount --bind {ro} {ro} && mount -o remount,ro,bind {ro} && "
              f"exec {' '.join(RLSWEEP)} train {exp} --set results_dir={ro / 'results'}")
    r = subprocess.run([*unshare, "--propagation", "private", "sh", "-c", script], capture_output=True, text=True,
                       timeout=60, cwd=ROOT, env=cli_env())
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert f"results_dir {ro / 'results'}: cannot write in {ro} (Read-only file system)" in lines[0]
    assert not (tmp_path / "mlflow.db").exists()  # refused before the store was made


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [\n")
    r = rlsweep("train", bad, timeout=60)
    assert r.returncode == 2 and f"{bad}: not valid YAML" in r.stderr
    r = rlsweep("train", tmp_path / "missing.yaml", timeout=60)
    assert r.returncode == 2 and "no such file" in r.stderr


@pytest.mark.slow
def test_train_then_restore_continues(exp, tmp_path):
    first = rlsweep("train", exp)
    assert first.returncode == 0, first.stderr[-3000:]
    assert printed(first.stdout, "env_steps") == 1024
    # without -v, only rlsweep's progress line: none of Ray's, Tune's or MLflow's own lines
    assert [x for x in first.stderr.splitlines() if x.strip() and not x.startswith("[")] == [], first.stderr
    ckpt = Path(re.search(r"^checkpoint: (.+)$", first.stdout, re.M).group(1))
    assert (ckpt / "learner.pt").is_file() and (ckpt / "state.json").is_file()

    # the checkpoint's policy plays deterministic episodes without Ray, the same way twice
    evals = [rlsweep("evaluate", ckpt, "--episodes", "4", "--seed", "5", timeout=120) for _ in range(2)]
    assert all(e.returncode == 0 for e in evals), evals[0].stderr
    assert evals[0].stdout == evals[1].stdout and printed(evals[0].stdout, "eval_return_mean") > 0
    assert "4 episodes, deterministic actions, seed 5" in evals[0].stdout
    r = rlsweep("evaluate", tmp_path / "nope", timeout=60)
    assert r.returncode == 2 and "no such checkpoint directory" in r.stderr

    # a checkpoint from another network is refused before anything starts
    r = rlsweep("train", exp, "--restore", ckpt, "--set", "policy.hidden_sizes=[8]", timeout=60)
    assert r.returncode == 2 and "policy.hidden_sizes=[16, 16]" in r.stderr

    second = rlsweep("train", exp, "--restore", ckpt, "--set", "stop.env_steps=2048")
    assert second.returncode == 0, second.stderr[-3000:]
    assert printed(second.stdout, "env_steps") == 2048  # continued from 1024, not from 0
    assert printed(second.stdout, "training_iteration") == 4  # 4 more iterations of 256

    # each train is one MLflow run, no parent, with params, per-iteration metrics and checkpoints
    from mlflow.tracking import MlflowClient

    # (read from a copy of mlflow.db alone, as a user would share it: the write-ahead log was folded in)
    (tmp_path / "copy").mkdir()
    shutil.copyfile(tmp_path / "mlflow.db", tmp_path / "copy" / "mlflow.db")
    client = MlflowClient(f"sqlite:///{tmp_path / 'copy' / 'mlflow.db'}")
    exp_id = client.get_experiment_by_name("clitest").experiment_id
    runs = client.search_runs([exp_id], order_by=["attributes.start_time ASC"])
    assert len(runs) == 2
    for run, steps in zip(runs, ([256, 512, 768, 1024], [1280, 1536, 1792, 2048]), strict=True):
        assert "mlflow.parentRunId" not in run.data.tags and run.data.tags["rlsweep.kind"] == "train"
        assert run.data.tags["rlsweep.command"].startswith(f"rlsweep train {exp}")  # where it came from
        assert "rlsweep.version.torch" in run.data.tags and run.data.tags["rlsweep.host"]
        assert run.data.tags["rlsweep.status"] == "finished" and run.info.status == "FINISHED"
        assert run.data.params["ppo.train_batch_size"] == "256" and run.data.params["seed"] == "1"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "rollouts/env_steps")] == steps
        assert {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")} == {
            "checkpoints/best", "checkpoints/final"}

    # evaluate straight from MLflow: the download leaves no temporary folder behind
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ref = f"runs:/{runs[0].info.run_id}/checkpoints/final"
    r = rlsweep("evaluate", ref, "--tracking-uri", store, "--episodes", "2", timeout=120, env=cli_env(TMPDIR=str(scratch)))
    assert r.returncode == 0 and "2 episodes" in r.stdout, r.stderr[-2000:]
    assert "Downloading artifacts" not in r.stderr, r.stderr  # no MLflow progress bar without -v
    assert list(scratch.iterdir()) == []
    # a store that is not there is not created by reading from it
    r = rlsweep("evaluate", ref, "--tracking-uri", f"sqlite:///{tmp_path / 'other.db'}", timeout=60)
    assert r.returncode == 2 and "there is no store at" in r.stderr and not (tmp_path / "other.db").exists()


def with_test_envs(*args):
    """`rlsweep` with the tests' own envs importable (in the driver and in every Ray worker)."""
    return rlsweep(*args, timeout=300, env=cli_env(test_envs=True))


@pytest.mark.slow
def test_a_diverging_trial_fails_and_says_why_in_the_terminal_and_in_mlflow(exp, tmp_path):
    """Rewards that turn NaN (a real env, in a real rollout actor) end the trial as an error that
    names the iteration and the quantity; exit 1; the MLflow run is FAILED with that reason, its curve
    ends in the NaN, and the divergence is not retried (max_failures is 1 here) nor checkpointed."""
    r = with_test_envs("train", exp, "--set", "env.id=tests.faulty_envs:NanRewardCartPole",
                       "--set", "env.kwargs={nan_after: 40}", "--set", "checkpoint_frequency=1")
    assert r.returncode == 1, r.stderr[-3000:]
    failed = next(line for line in r.stdout.splitlines() if line.startswith("failed: "))
    assert "iteration 2: the env returned non-finite rewards" in failed

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("clitest").experiment_id])
    assert run.info.status == "FAILED" and run.data.tags["rlsweep.status"] == "error"
    assert "iteration 2: the env returned non-finite rewards" in run.data.tags["rlsweep.reason"]
    assert "rlsweep.retries" not in run.data.tags
    history = client.get_metric_history(run.info.run_id, "rollouts/episode_return_mean")
    assert [m.step for m in history] == [256, 512] and math.isnan(history[-1].value)
    assert not client.list_artifacts(run.info.run_id, "checkpoints/final")
    [trial_dir] = (tmp_path / "results").glob("train-clitest-*/trial_*")
    assert [p.name for p in trial_dir.glob("checkpoint_*")] == ["checkpoint_000000"]  # iteration 1's only
    assert json.loads((trial_dir / "checkpoint_000000" / "state.json").read_text())["iterations"] == 1


@pytest.mark.slow
def test_a_crashed_trial_is_retried_from_its_checkpoint_in_the_same_run(exp, tmp_path):
    """The env raises once, in the trial's 3rd iteration: Tune restarts the trial from its checkpoint
    after iteration 2 (max_failures 1) and it finishes; one MLflow run, every step logged once."""
    marker = tmp_path / "crashed"
    r = with_test_envs("train", exp, "--set", "env.id=tests.faulty_envs:CrashOnceCartPole",
                       "--set", f"env.kwargs={{marker: '{marker}', crash_after: 80}}", "--set", "checkpoint_frequency=2",
                       "--set", "rollouts.num_rollout_workers=0", "--set", "resources.learner_cpus=1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert marker.exists() and printed(r.stdout, "env_steps") == 1024

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("clitest").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["rlsweep.status"] == "finished"
    assert run.data.tags["rlsweep.retries"] == "1" and "injected env crash" in run.data.tags["rlsweep.retry_reason"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "rollouts/env_steps")] == [256, 512, 768, 1024]


def test_a_trial_that_cannot_fit_the_local_ray_is_refused_after_it_starts(exp, tmp_path):
    """Within this machine's CPUs but beyond what Ray was given (a cgroup, RAY's own count): exit 2,
    one line, no MLflow run, instead of Tune waiting forever."""
    r = rlsweep("train", exp, "--set", "resources.learner_gpus=1", timeout=180, env=cli_env(CUDA_VISIBLE_DEVICES=""))
    assert r.returncode == 2, r.stderr[-2000:]
    assert "rlsweep: error: resources.learner_gpus 1: the local Ray" in r.stderr and "has 0 GPUs" in r.stderr
    from mlflow.tracking import MlflowClient

    exp_ = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_experiment_by_name("clitest")
    assert exp_ is None or not MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_runs([exp_.experiment_id])


def test_verbose_lets_ray_tune_and_mlflow_speak(exp, tmp_path):
    """(Without -v none of these lines show: test_train_then_restore_continues.)"""
    loud = rlsweep("train", "-v", exp, "--set", "stop.env_steps=256")
    assert loud.returncode == 0, loud.stderr[-2000:]
    for said in ("Started a local Ray instance", "Total run time", "Checkpoint successfully created"):
        assert said in loud.stderr, said


def _descendants(pid: int) -> list[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        found += kids
        frontier += kids
    return found


@pytest.mark.slow
def test_a_killed_learner_actor_fails_the_trial_and_tune_restarts_it_from_its_checkpoint(exp, tmp_path):
    """SIGKILL to the learner actor's process mid-run: the trial fails, is restarted from its last
    checkpoint on new learner actors (max_failures 1) and finishes; one MLflow run, every step once."""
    import signal
    import time


    proc = rlsweep_process("train", exp, "--set", "learners.num_learners=1", "--set", "learners.cpus_per_learner=0.25",
                           "--set", "checkpoint_frequency=2", "--set", "stop.env_steps=5120", "--set", "ppo.num_epochs=30",
                           "--set", "tracking.flush_s=0")
    client = store_client(tmp_path, "clitest", proc)
    deadline, victim = time.time() + 180, None
    while victim is None:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        try:
            [run] = client.search_runs([client.get_experiment_by_name("clitest").experiment_id])
            logged = len(client.get_metric_history(run.info.run_id, "rollouts/env_steps"))
        except Exception:  # the store and the run are made by the command
            logged = 0
        if 3 <= logged < 14:  # a checkpoint exists and 6+ of the 20 iterations are still to come
            learners = [p for p in _descendants(proc.pid)
                        if b"LearnerActor" in Path(f"/proc/{p}/cmdline").read_bytes()]
            if learners:
                victim = learners[0]
        time.sleep(0.1)
    os.kill(victim, signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    [run] = client.search_runs([client.get_experiment_by_name("clitest").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["rlsweep.retries"] == "1", run.data.tags
    assert [m.step for m in client.get_metric_history(run.info.run_id, "rollouts/env_steps")] == list(range(256, 5121, 256))
