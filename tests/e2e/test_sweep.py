"""`rlsweep sweep / resume / best / ui` as a user runs them, against real Ray, Optuna and MLflow."""

import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import (
    LR_ONLY,
    ROOT,
    cli_env,
    free_port,
    rlsweep,
    runs_of,
    start_mlflow_server,
    stop_mlflow_server,
    store_client,
    wait_http,
)

EXP = """\
name: sweeptest
seed: 2
results_dir: {results}
checkpoint_frequency: 2
env: {{id: CartPole-v1}}
policy: {{hidden_sizes: [16, 16]}}
ppo: {{lr: 0.001, train_batch_size: 512, minibatch_size: 256, num_epochs: 2}}
rollouts: {{num_rollout_workers: 1, num_envs_per_worker: 8}}
evaluation: {{interval: 1, episodes: 3}}
stop: {{env_steps: {steps}}}
resources: {{learner_cpus: 0.5, worker_cpus: 0.25, evaluation_cpus: 0.25}}
sweep: {{trials: 4, max_concurrent: {concurrent}, sampler: tpe, n_startup_trials: 2, seed: 3}}
tracking: {{local_dir: {store}, log_video: {winner}, register_model: {winner}}}
"""
CORE = "search_spaces/ppo_core.yaml"


def experiment(tmp_path, steps=2048, concurrent=2, winner=False):
    """The tests' small sweep; `winner`: winner.gif and the registered model at its end (seconds each;
    proven once, against a server)."""
    p = tmp_path / "exp.yaml"
    p.write_text(EXP.format(results=tmp_path / "results", store=tmp_path, steps=steps, concurrent=concurrent,
                            winner=str(winner).lower()))
    return p


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on loopback with its own SQLite store and artifact folder."""
    port = free_port()
    proc = start_mlflow_server(tmp_path, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_mlflow_server(proc)


def trial_results(sweep_dir):
    out = {}
    for d in sorted(Path(sweep_dir).glob("trial_*")):
        lines = (d / "result.json").read_text().splitlines() if (d / "result.json").exists() else []
        rows = [json.loads(x) for x in lines]
        if rows:
            out[rows[0]["trial_id"]] = rows
    return out


def assert_one_best_trial(stdout, sweep_dir, client, tmp_path, metric="eval_return_mean"):
    """The closing summary, its table's first row, the parent run's best_* metric and tag, `best -o`
    and the ranked rows all name the same trial of a finished sweep."""
    from rlsweep.ranking import ranked_rows

    [top] = ranked_rows(sweep_dir, metric, "max")[:1]
    summary = re.search(r"^best trial:  (\S+) \(trial id (\S+)\) with ", stdout, re.M)
    assert summary and summary.group(1, 2) == (top["number"], top["trial_id"]), stdout
    assert re.search(rf"^  1\. {top['number']} ", stdout, re.M), stdout  # the final table's first row
    [parent] = [x for x in runs_of(client) if x.data.tags.get("rlsweep.kind") == "sweep"
                and x.data.tags["rlsweep.dir"] == str(sweep_dir)]
    assert parent.data.tags["rlsweep.best_trial_id"] == top["trial_id"]
    assert parent.data.metrics[f"best_{metric}"] == top[metric]
    out = tmp_path / f"best-{sweep_dir.name}.yaml"
    r = rlsweep("best", sweep_dir, "-o", out)
    assert r.returncode == 0, r.stderr
    assert out.read_text().startswith(f"# best trial {top['number']} (trial id {top['trial_id']}) of sweep {sweep_dir.name}: ")
    assert f"(trial {top['number']}, trial id {top['trial_id']}, {metric} = " in r.stdout
    assert f"its checkpoint: {top['checkpoint']}; play it with: " in r.stdout and " evaluate " in r.stdout


@pytest.mark.slow
def test_sweep_against_an_mlflow_server(tmp_path, mlflow_server):
    exp = experiment(tmp_path, winner=True)
    r = rlsweep("sweep", exp, "--space", CORE, "--name", "s1", uri=mlflow_server)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "best trial:" in r.stdout and "rlsweep ui" in r.stdout
    assert f"{mlflow_server}/#/experiments/" in r.stdout and "runs?workflowType=machine_learning" in r.stdout
    assert not (tmp_path / "mlflow.db").exists()  # the server is the store, not the local default

    client = MlflowClient(mlflow_server)
    runs = runs_of(client)
    parents = [x for x in runs if x.data.tags.get("rlsweep.kind") == "sweep"]
    children = [x for x in runs if x.data.tags.get("rlsweep.kind") == "trial"]
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    results = trial_results(tmp_path / "results" / "s1")
    assert len(results) == 4
    numbers = set()
    for child in children:
        tags, params = child.data.tags, child.data.params
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["rlsweep.status"] == "finished" and child.info.status == "FINISHED"
        rows = results[tags["rlsweep.trial_id"]]
        config = rows[0]["config"]
        # params are the values the trial used
        assert float(params["ppo.lr"]) == config["ppo"]["lr"]
        assert float(params["ppo.gamma"]) == config["ppo"]["gamma"]
        assert int(params["ppo.train_batch_size"]) == config["ppo"]["train_batch_size"]
        assert params["seed"] == "2" and tags["rlsweep.seed"] == "2"
        # readable in the runs table: number and searched values in the name, as a tag and description
        name = child.info.run_name
        number = int(name.split(" ", 1)[0])
        numbers.add(number)
        assert name.startswith(f"{number:03d} lr={config['ppo']['lr']:.3g} ") and "batch=" in name, name
        assert f"ppo.lr={config['ppo']['lr']}" in tags["rlsweep.searched"]
        assert tags["mlflow.note.content"].startswith(f"Trial {number:03d} of sweep s1: ")
        # one point per iteration, at increasing env steps
        # (in MLflow, what training did is in a chart section of its own)
        for metric in ("rollouts/env_steps", "evaluation/eval_return_mean", "training/policy_loss", "timing/time_sample_s"):
            hist = client.get_metric_history(child.info.run_id, metric)
            assert sorted(m.step for m in hist) == [row["env_steps"] for row in rows], metric
        assert "policy_loss" not in child.data.metrics and "eval_return_mean" not in child.data.metrics
        arts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"config.yaml", "checkpoints"} <= arts
        ckpts = {a.path for a in client.list_artifacts(child.info.run_id, "checkpoints")}
        assert {"checkpoints/final", "checkpoints/best"} <= ckpts
    assert numbers == {1, 2, 3, 4}
    assert "top trials by eval_return_mean" in r.stdout and "  4. 0" in r.stdout
    # the parent's row is the sweep's answer: the best trial's searched values and metric, same names
    best_child = next(c for c in children if c.info.run_id == parent.data.tags["rlsweep.best_run_id"])
    assert parent.info.run_name == "s1"
    for key in ("ppo.lr", "ppo.gamma", "ppo.train_batch_size"):
        assert parent.data.params[key] == best_child.data.params[key]
    assert parent.data.metrics["best_eval_return_mean"] == best_child.data.metrics["evaluation/eval_return_mean"]
    assert "evaluation/eval_return_mean" not in parent.data.metrics  # not a ninth row in a sort by the trials' metric
    # the winner is marked in the runs table and the charts' legends, and only it
    assert best_child.info.run_name.endswith(" (winner)") and best_child.data.tags["rlsweep.winner"] == "true"
    assert [c for c in children if "winner" in c.info.run_name or "rlsweep.winner" in c.data.tags] == [best_child]
    assert parent.data.tags["mlflow.note.content"].startswith(
        f"**Winner: trial {best_child.info.run_name.removesuffix(' (winner)')}**")
    assert "system/tracking_s" in parent.data.metrics  # what tracking cost, beside MLflow's system metrics
    parent_arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best_config.yaml", "results.csv", "optimization_history.png", "param_importance.png",
            "learning_curves.png", "reproducibility.md", "winner.gif"} <= parent_arts
    # the winner playing a deterministic episode, through the server's proxied artifacts
    from PIL import Image

    with Image.open(client.download_artifacts(parent.info.run_id, "winner.gif", str(tmp_path))) as im:
        assert im.format == "GIF" and im.n_frames >= 2
        assert parent.data.tags["rlsweep.video"].startswith(f"winner.gif: ({im.n_frames} frames, ")
    # the winner as a registered model: a new version of the experiment's model, alias champion, which a
    # fresh process plays from the server's registry; `best --register` makes another
    assert parent.data.tags["rlsweep.model"] == "sweeptest version 1 (@champion)"
    assert "model:       sweeptest version 1 (@champion); play it with: " in r.stdout
    assert "model/MLmodel" in {a.path for a in client.list_artifacts(parent.info.run_id, "model")}
    played = rlsweep("evaluate", "models:/sweeptest@champion", "--tracking-uri", mlflow_server, "--episodes", "2")
    assert played.returncode == 0 and played.stdout.startswith("CartPole-v1: 2 episodes, "), played.stderr
    again = rlsweep("best", tmp_path / "results" / "s1", "--register", "s1-winner", uri=mlflow_server)
    assert again.returncode == 0, again.stderr
    assert "registered s1-winner version 1 (@champion); play it with: " in again.stdout + again.stderr
    assert client.get_model_version_by_alias("s1-winner", "champion").run_id == parent.info.run_id
    # where every run came from: this checkout's commit, the command, the versions, the machine
    import ray

    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    for run in [parent, *children]:
        tags = run.data.tags
        assert tags["mlflow.source.git.commit"] == head and tags["rlsweep.git_dirty"] in ("true", "false")
        assert tags["rlsweep.command"].startswith("rlsweep sweep ") and " --name s1" in tags["rlsweep.command"]
        assert tags["rlsweep.version.ray"] == ray.__version__ and tags["rlsweep.cpus"] == str(os.cpu_count())
    checklist = Path(client.download_artifacts(parent.info.run_id, "reproducibility.md", str(tmp_path))).read_text()
    winner_number = best_child.info.run_name.split(" ", 1)[0]
    for fragment in (f"trial {winner_number} (trial id {best_child.data.tags['rlsweep.trial_id']}",
                     "sampler: tpe (seed 3); scheduler: fifo", "tuning seeds (the search's agents): 2", "confirmation seeds: none",
                     f"rlsweep best {tmp_path / 'results' / 's1'} -o best.yaml && rlsweep train best.yaml",
                     f"- mlflow.source.git.commit: {head}"):
        assert fragment in checklist, (fragment, checklist)
    import optuna  # the study names its objective (optuna-dashboard shows it, not "Objective 0")

    study = optuna.load_study(study_name="s1", storage=f"sqlite:///{tmp_path / 'results' / 's1' / 'optuna.db'}")
    assert study.metric_names == ["eval_return_mean"]
    # each Optuna trial carries its trial's one name (and run), as optuna-dashboard shows them
    by_run = {c.info.run_id: c.info.run_name.split(" ", 1)[0] for c in children}
    named = [t for t in study.trials if "rlsweep_trial" in t.user_attrs]
    assert named and all(by_run[t.user_attrs["mlflow_run_id"]] == t.user_attrs["rlsweep_trial"] for t in named), \
        [t.user_attrs for t in study.trials]
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 4
    assert_one_best_trial(r.stdout, tmp_path / "results" / "s1", client, tmp_path)

    # the best config is a runnable experiment, and `best` writes the same trial
    best_file = tmp_path / "best.yaml"
    r = rlsweep("best", "s1", "-o", best_file, "--results-dir", tmp_path / "results")
    assert r.returncode == 0, r.stderr
    best = yaml.safe_load(best_file.read_text())
    assert best["name"] == "s1-best" and best["tracking"]["experiment"] == "sweeptest"  # retrained beside its trials
    local = client.download_artifacts(parent.info.run_id, "best_config.yaml", str(tmp_path))
    assert yaml.safe_load(Path(local).read_text()) == best
    r = rlsweep("best", "s1", "-o", best_file, "--results-dir", tmp_path / "results")
    assert r.returncode == 2 and "file exists" in r.stderr  # never overwrites

    # and a checkpoint logged to MLflow restores a training run (runs:/ URI)
    child = next(c for c in children if c.data.tags["rlsweep.trial_id"] == parent.data.tags["rlsweep.best_trial_id"])
    done, batch = int(child.data.metrics["rollouts/env_steps"]), int(child.data.params["ppo.train_batch_size"])
    r = rlsweep("train", best_file, "--restore", f"runs:/{child.info.run_id}/checkpoints/final",
                "--set", f"stop.env_steps={done + batch}", "--set", "stop.target_return=null",
                "--set", f"results_dir={tmp_path / 'results'}", uri=mlflow_server)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"env_steps              {done + batch}\n" in r.stdout  # one iteration on from the checkpoint
    continued = client.get_run(re.search(r"^mlflow run: (\w+)", r.stdout, re.M).group(1))
    assert continued.info.experiment_id == parent.info.experiment_id and continued.info.run_name == "s1-best"
    assert continued.data.tags["rlsweep.restored_from"] == f"runs:/{child.info.run_id}/checkpoints/final"
    assert continued.data.tags["rlsweep.restored_from_run"] == child.info.run_id
    assert continued.data.tags["rlsweep.restored_from_env_steps"] == str(done)

    # resuming a finished sweep says so, starts nothing and changes nothing in MLflow
    before = [(x.info.run_id, x.info.status, x.info.end_time, x.data.tags, x.data.params, x.data.metrics)
              for x in runs_of(client) if x.data.tags.get("rlsweep.dir", "").endswith("s1")]
    r = rlsweep("resume", "s1", "--results-dir", tmp_path / "results", uri=mlflow_server)
    assert r.returncode == 0 and "has finished: nothing to resume" in r.stdout, r.stderr[-2000:]
    after = [(x.info.run_id, x.info.status, x.info.end_time, x.data.tags, x.data.params, x.data.metrics)
             for x in runs_of(client) if x.data.tags.get("rlsweep.dir", "").endswith("s1")]
    assert sorted(after, key=str) == sorted(before, key=str)


def _sweep_process(exp, space, name, *extra):
    return subprocess.Popen([sys.executable, "-m", "rlsweep.cli", "sweep", str(exp), "--space", str(space),
                             "--name", name, *extra, "--set", "checkpoint_frequency=3",
                             # metrics every iteration, so that the watcher can catch a trial between
                             # two checkpoints; iterations slow enough (~0.3 s) for it to look in time
                             "--set", "tracking.flush_s=0", "--set", "ppo.num_epochs=20",
                             "--set", "ppo.minibatch_size=32"],
                            cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            # niced, so that on 2 cores the test's watcher sees every iteration land
                            preexec_fn=lambda: os.nice(10))


def _wait_mid_sweep(tmp_path, proc, per_trial, finished_before=1, timeout=240):
    """Until MLflow shows `finished_before` trials finished and another part-way through and past its
    last checkpoint (they come every 3 iterations), so that resuming must replay iterations it logged.

    MLflow is watched because the driver logs every iteration at once; Tune's own result files only
    reach the results folder when a checkpoint is synced.
    """
    client = store_client(tmp_path, "sweeptest", proc)
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        try:
            children = [r for r in runs_of(client) if r.data.tags.get("rlsweep.kind") == "trial"]
            finished = [r for r in children if r.data.tags.get("rlsweep.status") == "finished"]
            mid = []
            for r in children:
                if r.data.tags.get("rlsweep.status") == "running":
                    n = len(client.get_metric_history(r.info.run_id, "rollouts/env_steps"))
                    if n >= 4 and n % 3 and n * 512 < per_trial - 512:
                        mid.append(r)
        except Exception:  # the store is created by the sweep; it may not exist yet or be busy
            finished, mid = [], []
        if len(finished) == finished_before and mid:
            return
        time.sleep(0.05)
    raise TimeoutError("the sweep never reached the middle of a trial after the first ones")


def _check_interrupted(tmp_path, proc, trials, done=1):
    """The interruption as the user sees it: exit 130, true counts, the resume command; in MLflow the
    parent and the cut trial interrupted (KILLED), the finished trials finished."""
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert f"interrupted ({done}/{trials} trials done, 0 of them failed)" in err and "rlsweep resume" in err, err[-3000:]
    assert "done:" not in out
    runs = runs_of(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"))
    [parent] = [x for x in runs if x.data.tags.get("rlsweep.kind") == "sweep"]
    assert parent.info.status == "KILLED" and parent.data.tags["rlsweep.status"] == "interrupted"
    children = sorted(x.data.tags["rlsweep.status"] for x in runs if x.data.tags.get("rlsweep.kind") == "trial")
    assert children == ["finished"] * done + ["interrupted"]


def _check_resumed(tmp_path, name, per_trial, trials=4):
    sweep_dir = tmp_path / "results" / name
    r = rlsweep("resume", name, "--results-dir", tmp_path / "results")
    assert r.returncode == 0, r.stderr[-4000:]
    res = trial_results(sweep_dir)
    assert len(res) == trials and all(rows[-1]["env_steps"] >= per_trial for rows in res.values())

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = runs_of(client)
    parents = [x for x in runs if x.data.tags.get("rlsweep.kind") == "sweep"]
    children = [x for x in runs if x.data.tags.get("rlsweep.kind") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(c.data.tags["rlsweep.trial_id"] for c in children) == sorted(res)  # one run per trial
    for c in children:  # no gap and no repeated step, though iterations past a checkpoint were replayed
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "rollouts/env_steps")]
        assert steps == list(range(512, per_trial + 1, 512)), (c.data.tags["rlsweep.trial_id"], steps)
        assert c.info.status == "FINISHED"

    # the summary on the parent covers every trial, also those that finished before the interruption
    import csv

    table = client.download_artifacts(parents[0].info.run_id, "results.csv", str(tmp_path))
    with open(table) as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["mlflow_run_id"] for r in rows) == sorted(c.info.run_id for c in children)

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    studied = study.get_trials(deepcopy=False)
    assert len(studied) == trials
    assert sorted(t.user_attrs["tune_trial_id"] for t in studied) == sorted(res)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in studied)
    for t in studied:  # each trial's curve for optuna-dashboard (every iteration at flush_s 0), by env steps
        assert sorted(t.intermediate_values) == list(range(512, per_trial + 1, 512)), t.intermediate_values
        assert t.intermediate_values[per_trial] == t.value
    assert_one_best_trial(r.stdout, sweep_dir, client, tmp_path)  # and again after a resume
    return r


@pytest.mark.slow
def test_sigkill_mid_sweep_then_resume(tmp_path):
    per_trial = 6144  # 12 iterations of 512, checkpoints every 3
    exp = experiment(tmp_path, steps=per_trial, concurrent=1)
    (tmp_path / "space.yaml").write_text(LR_ONLY)
    proc = _sweep_process(exp, tmp_path / "space.yaml", "crash", "--trials", "2")
    try:
        _wait_mid_sweep(tmp_path, proc, per_trial)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # a payload planted in Tune's pickled state never runs: resume puts back the copy rlsweep signed
    marker = tmp_path / "payload-ran"
    sweep_dir = tmp_path / "results" / "crash"
    (sweep_dir / "tuner.pkl").write_bytes(pickle.dumps(Payload(f"touch {marker}")))
    # Tune deletes checkpoints beyond keep_checkpoints as soon as a newer one comes, and snapshots
    # which one is a trial's latest at most once a second: a kill in between leaves a state naming a
    # deleted checkpoint. Here the cut trial's are all deleted, whichever the signed state names.
    [cut] = [c.data.tags["rlsweep.trial_id"] for c in runs_of(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"))
             if c.data.tags.get("rlsweep.kind") == "trial" and c.data.tags.get("rlsweep.status") == "running"]
    deleted = sorted(p.name for p in (sweep_dir / f"trial_{cut}").glob("checkpoint_*"))
    assert deleted
    for name in deleted:
        shutil.rmtree(sweep_dir / f"trial_{cut}" / name)
    r = _check_resumed(tmp_path, "crash", per_trial, trials=2)
    assert not marker.exists() and "tuner.pkl changed after it was signed" in r.stderr
    for name in deleted:  # put back, and the trial went on from where its checkpoint was
        assert f"trial_{cut}/{name} put back: Tune had deleted it" in r.stderr, r.stderr[-3000:]
    assert not (sweep_dir / ".rlsweep_kept").exists()  # the finished sweep keeps no extra copies


@pytest.mark.slow
def test_a_pbt_sweep_killed_mid_run_resumes_to_its_end(tmp_path):
    """SIGKILL while the population trains, then `rlsweep resume`: Tune restores PBT afresh (its
    bookkeeping is not saved) and the synchronous population, in step far past PBT's first interval,
    must not wait for ever; it trains to its end and keeps copying strong trials into weak ones."""
    per_trial = 6144
    exp = experiment(tmp_path, steps=per_trial)
    (tmp_path / "space.yaml").write_text(LR_ONLY)
    proc = subprocess.Popen([sys.executable, "-m", "rlsweep.cli", "sweep", str(exp), "--space", str(tmp_path / "space.yaml"),
                             "--name", "pbt", "--set", "sweep.scheduler=pbt", "--set", "sweep.pbt.interval=2048",
                             "--set", "sweep.pbt.quantile_fraction=0.5", "--set", "sweep.max_concurrent=null",
                             "--set", "tracking.flush_s=0", "--set", "rollouts.num_rollout_workers=0",
                             "--set", "resources.learner_cpus=1"],
                            cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        client = store_client(tmp_path, "sweeptest", proc)
        deadline = time.time() + 240
        while time.time() < deadline:  # until every trial is past the first interval
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            try:
                steps = [len(client.get_metric_history(r.info.run_id, "rollouts/env_steps")) for r in runs_of(client)
                         if r.data.tags.get("rlsweep.kind") == "trial"]
            except Exception:  # the store is busy
                steps = []
            if len(steps) == 4 and min(steps) >= 5:
                break
            time.sleep(0.1)
        else:
            raise TimeoutError("the population never got past its first interval")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    r = rlsweep("resume", "pbt", "--results-dir", tmp_path / "results", timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    res = trial_results(tmp_path / "results" / "pbt")
    assert len(res) == 4 and all(rows[-1]["env_steps"] == per_trial for rows in res.values())
    resumed = [row for rows in res.values() for row in rows if row.get("cloned_from")]
    assert resumed, "no trial continued from another"
    [parent] = [x for x in runs_of(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"))
                if x.data.tags.get("rlsweep.kind") == "sweep"]
    assert parent.info.status == "FINISHED"


class Payload:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.slow
def test_ctrl_c_then_sigterm_in_the_last_trial_stop_cleanly_and_resume(tmp_path):
    """Ctrl-C (SIGINT to the whole foreground group, as a terminal sends it) in the second of three
    trials; `resume`; then `kill` (SIGTERM, to the driver alone) while the sweep's last trial runs:
    Tune would call every trial TERMINATED, rlsweep reports it interrupted; `resume` finishes it."""
    per_trial = 6144
    exp = experiment(tmp_path, steps=per_trial, concurrent=1)
    (tmp_path / "space.yaml").write_text(LR_ONLY)
    proc = _sweep_process(exp, tmp_path / "space.yaml", "ctrlc", "--trials", "3")
    try:
        _wait_mid_sweep(tmp_path, proc, per_trial)
        # a second process cannot take the sweep over while this one runs it: one line, nothing touched
        other = rlsweep("resume", "ctrlc", "--results-dir", tmp_path / "results", timeout=120)
        lines = other.stderr.strip().splitlines()
        assert other.returncode == 2 and len(lines) == 1, other.stderr[-3000:]
        assert f"sweep ctrlc is running in process {proc.pid} " in lines[0], lines
        os.killpg(proc.pid, signal.SIGINT)
        _check_interrupted(tmp_path, proc, trials=3)

        proc = subprocess.Popen([sys.executable, "-m", "rlsweep.cli", "resume", "ctrlc", "--results-dir",
                                 str(tmp_path / "results")], cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True,
                                preexec_fn=lambda: os.nice(10))
        _wait_mid_sweep(tmp_path, proc, per_trial, finished_before=2)
        os.kill(proc.pid, signal.SIGTERM)
        _check_interrupted(tmp_path, proc, trials=3, done=2)
    finally:
        if proc.poll() is None:  # a failed wait: the sweep and its Ray go, not on into other tests
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    _check_resumed(tmp_path, "ctrlc", per_trial, trials=3)


@pytest.mark.parametrize("setup,args,fragment", [
    (lambda t: (t / "s.yaml").write_text("ppo.nope: {type: uniform, low: 0, high: 1}\n"),
     ["--space", "{tmp}/s.yaml"], "unknown parameter 'ppo.nope'"),
    (lambda t: (t / "s.yaml").write_text("ppo.lr: {type: uniform, low: 1, high: 0.1}\n"),
     ["--space", "{tmp}/s.yaml"], "low (1.0) must be below high (0.1)"),
    (lambda t: (t / "s.yaml").write_text("ppo.lr: {type: normal, low: 0, high: 1}\n"),
     ["--space", "{tmp}/s.yaml"], "unknown type 'normal'"),
    (None, ["--space", "{tmp}/missing.yaml"], "missing.yaml: no such file"),
    (None, ["--set", "tracking.local_dir={tmp}/no/such/folder"], "does not exist"),
    (None, ["--set", "tracking.uri=http://127.0.0.1:9"], "cannot be reached"),
    (None, ["--set", "sweep.metric=accuracy"], "unknown metric 'accuracy'"),
    (lambda t: (t / "not-a-db").write_text("hello"), ["--set", "tracking.uri=sqlite:///{tmp}/not-a-db"],
     "is not an SQLite database"),
    (lambda t: (t / "a-file").write_text(""), ["--set", "results_dir={tmp}/a-file"], "is a file, expected a folder"),
    (None, ["--set", "sweep.study_storage=sqlite:///{tmp}/no/such/optuna.db"], "folder {tmp}/no/such does not exist"),
    (None, ["--name", "réseau"], "--name 'réseau': use ASCII letters, digits"),  # `best -o` would not train
])
def test_bad_sweep_input_exits_2_and_creates_nothing(tmp_path, setup, args, fragment):
    exp = experiment(tmp_path)
    if setup:
        setup(tmp_path)
    r = rlsweep("sweep", exp, *[a.format(tmp=tmp_path) for a in args], timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rlsweep: error: ") and fragment.format(tmp=tmp_path) in lines[0], \
        r.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "mlflow.db").exists()


def test_resume_or_best_of_an_unknown_sweep(tmp_path):
    for cmd in ("resume", "best"):
        r = rlsweep(cmd, "nope", "--results-dir", tmp_path, timeout=60)
        assert r.returncode == 2 and "no sweep 'nope'" in r.stderr


def test_an_existing_sweep_name_is_not_overwritten(tmp_path):
    exp = experiment(tmp_path)
    existing = tmp_path / "results" / "taken"
    existing.mkdir(parents=True)
    (existing / "keep.txt").write_text("mine")
    r = rlsweep("sweep", exp, "--name", "taken", timeout=60)
    assert r.returncode == 2 and "already exists" in r.stderr
    assert (existing / "keep.txt").read_text() == "mine"


def test_ui_serves_the_store(tmp_path):
    exp = experiment(tmp_path)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "rlsweep.cli", "ui", str(exp), "--port", str(port), "--create"],
                            cwd=ROOT,
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert f"http://127.0.0.1:{port}" in proc.stdout.readline()
        wait_http(f"http://127.0.0.1:{port}/health", proc)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert (tmp_path / "mlflow.db").exists()
    # the server started and answered, without the two lines MLflow prints at every start
    assert "Registry store URI" not in out + err and "Security middleware" not in out + err, out + err


@pytest.mark.slow
def test_ui_links_resolve_on_a_real_sweep_and_sigterm_stops_every_server_process(tmp_path):
    import json
    import urllib.request

    exp = experiment(tmp_path, steps=512, concurrent=2)
    (tmp_path / "space.yaml").write_text(LR_ONLY)
    r = rlsweep("sweep", exp, "--space", tmp_path / "space.yaml", "--name", "linked", "--trials", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    port = free_port()
    # started as a shell starts a background job: SIGINT ignored, SIGTERM must still stop it
    proc = subprocess.Popen([sys.executable, "-m", "rlsweep.cli", "ui", str(exp), "--port", str(port)], cwd=ROOT,
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        lines = [proc.stdout.readline() for _ in range(4)]
        base = f"http://127.0.0.1:{port}"
        runs_link = re.search(rf"runs of sweeptest: ({base}/#/experiments/(\d+)/runs\?workflowType=machine_learning)$",
                              lines[1].rstrip())
        sweep_link = re.search(rf"its latest sweep, linked: {base}/#/experiments/(\d+)/runs/(\w+)"
                               r"\?workflowType=machine_learning$", lines[2].rstrip())
        trials_link = re.search(r"its trials, best first: (\S+)$", lines[3].rstrip())
        assert runs_link and sweep_link and trials_link, lines
        # in model-training mode, the parent's children, best first (eval_return_mean: descending)
        assert trials_link.group(1) == (f"{runs_link.group(1)}&searchFilter=tags.mlflow.parentRunId%20%3D%20"
                                        f"'{sweep_link.group(2)}'&orderByKey=metrics.%60evaluation/eval_return_mean%60"
                                        "&orderByAsc=false")
        # the sweep's own last lines gave the same links, and the trials' curves overlaid
        for link in (sweep_link.group(0).split(": ", 1)[1], trials_link.group(1),
                     trials_link.group(1) + "&compareRunsMode=CHART"):
            assert link.replace(base, "http://127.0.0.1:5000") in r.stdout, r.stdout
        wait_http(base + "/health", proc)
        page = urllib.request.urlopen(base + "/", timeout=10).read().decode()
        assert "<html" in page.lower() and "mlflow" in page.lower()  # the UI's app; the #/ route is client-side

        def api(path):
            return json.loads(urllib.request.urlopen(f"{base}/ajax-api/2.0/mlflow/{path}", timeout=10).read())

        exp_id, run_id = sweep_link.group(1), sweep_link.group(2)
        assert runs_link.group(2) == exp_id and api(f"experiments/get?experiment_id={exp_id}")["experiment"]["name"] == "sweeptest"
        parent = api(f"runs/get?run_id={run_id}")["run"]
        assert parent["info"]["run_name"] == "linked" and parent["info"]["experiment_id"] == exp_id
        # the runs table as the UI server serves it: children named by number and value, tagged
        client = MlflowClient(base)
        children = client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{run_id}'")
        assert sorted(c.info.run_name.split(" ")[0] for c in children) == ["001", "002"]
        for c in children:
            assert re.fullmatch(r"00[12] lr=[0-9.e-]+( \(winner\))?", c.info.run_name), c.info.run_name
            assert c.data.tags["rlsweep.searched"].startswith("ppo.lr=") and "evaluation/eval_return_mean" in c.data.metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    with socket.socket() as again:  # no server process is left listening (closed connections may linger)
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.time() + 10
        while True:
            try:
                again.bind(("127.0.0.1", port))
                break
            except OSError:
                assert time.time() < deadline, "the MLflow server outlived `rlsweep ui`"
                time.sleep(0.5)


def test_ui_refuses_a_missing_store_and_a_busy_port(tmp_path):
    exp = experiment(tmp_path)
    r = rlsweep("ui", exp, timeout=60)
    assert r.returncode == 2 and "no MLflow store at" in r.stderr and "--create" in r.stderr
    assert not (tmp_path / "mlflow.db").exists()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        r = rlsweep("ui", exp, "--create", "--port", busy.getsockname()[1], timeout=60)
    assert r.returncode == 1 and "is in use" in r.stderr and "--port" in r.stderr


@pytest.mark.slow
def test_asha_stops_weak_trials_early(tmp_path):
    exp = experiment(tmp_path, steps=8192, concurrent=2)
    (tmp_path / "space.yaml").write_text("ppo.lr: {type: loguniform, low: 1.0e-5, high: 3.0e-3}\n")
    r = rlsweep("sweep", exp, "--space", tmp_path / "space.yaml", "--name", "asha", "--trials", "6",
                "--set", "sweep.scheduler=asha", "--set", "sweep.grace_period=1024",
                "--set", "sweep.reduction_factor=2", "--set", "sweep.sampler=random")
    assert r.returncode == 0, r.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    children = [x for x in runs_of(client) if x.data.tags.get("rlsweep.kind") == "trial"]
    assert len(children) == 6
    statuses = {c.data.tags["rlsweep.status"] for c in children}
    steps = sorted(c.data.metrics["rollouts/env_steps"] for c in children)
    assert "stopped early" in statuses and steps[0] < 8192 <= steps[-1], (statuses, steps)


@pytest.mark.slow
def test_make_sweep_job_finds_a_solving_config(tmp_path):
    """What `make sweep` runs, in a scratch results folder and store: the best trial solves CartPole."""
    r = rlsweep("sweep", "experiments/cartpole_ppo.yaml", "--space", CORE, "--name", "make-sweep",
                "--set", f"results_dir={tmp_path / 'results'}", "--set", f"tracking.local_dir={tmp_path}",
                timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    confirmed = float(r.stdout.split("confirmed:   env_steps_to_target = ")[1].split()[0])
    assert confirmed < 100_000, r.stdout  # below the budget: on fresh seeds too, it reached the target
    runs = runs_of(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"), "cartpole_ppo")
    children = [x for x in runs if x.data.tags.get("rlsweep.kind") == "trial"]
    [parent] = [x for x in runs if x.data.tags.get("rlsweep.kind") == "sweep"]
    # the winner filmed playing (at most 10 s of its episode)
    assert re.match(r"winner\.gif: \(\d+ frames, \d+\.\d s, \d+ KiB; ", parent.data.tags["rlsweep.video"]), \
        parent.data.tags
    search = [c for c in children if c.data.tags.get("rlsweep.phase") != "confirm"]
    confirming = [c for c in children if c.data.tags.get("rlsweep.phase") == "confirm"]
    assert len(search) == 8 and len(confirming) == 3  # the shipped round: the best 3 on 8 fresh seeds
    winner = min(confirming, key=lambda c: c.data.metrics["cost/env_steps_to_target"])
    assert winner.data.metrics["cost/env_steps_to_target"] == confirmed
    assert winner.data.metrics["cost/seeds_at_target"] >= 6  # (nearly) every fresh seed reached 475
    assert len([k for k in winner.data.metrics if k.startswith("evaluation/eval_return_mean/seed_")]) == 8
    # the cost-aware objective tells the trials apart (the return, capped at 500, tied several at the top)
    assert len({c.data.metrics["cost/env_steps_to_target"] for c in search}) >= 3, [c.data.metrics for c in search]
    # optuna-dashboard's curves: intermediate values every tracking.flush_s seconds, the last at the trial's end
    study = optuna.load_study(study_name="make-sweep", storage=f"sqlite:///{tmp_path / 'results/make-sweep/optuna.db'}")
    for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        steps = sorted(t.intermediate_values)
        assert steps and steps[0] > 0 and t.intermediate_values[steps[-1]] == t.value, (t.number, t.intermediate_values)


@pytest.mark.slow
def test_two_sweeps_started_together_on_a_fresh_store_both_finish(tmp_path):
    """Two `rlsweep sweep` processes at the same moment, one brand-new SQLite store: MLflow's migrations
    are serialised, both sweeps finish, each with its parent and its trial."""
    exp = experiment(tmp_path, steps=512, concurrent=1)
    (tmp_path / "space.yaml").write_text(LR_ONLY)
    procs = [subprocess.Popen([sys.executable, "-m", "rlsweep.cli", "sweep", str(exp), "--space", str(tmp_path / "space.yaml"),
                               "--name", name, "--trials", "1"], cwd=ROOT, env=cli_env(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name in ("left", "right")]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = runs_of(client)
    assert sorted(r.info.run_name for r in runs if r.data.tags.get("rlsweep.kind") == "sweep") == ["left", "right"]
    assert len([r for r in runs if r.data.tags.get("rlsweep.kind") == "trial"]) == 2
    assert {r.info.status for r in runs} == {"FINISHED"}


def _wait_for_confirmation(client, proc, ready, timeout=300):
    """Until a confirmation trial's run is `ready(run, env_steps points logged)`."""
    deadline = time.time() + timeout
    while True:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline, "the confirmation round never got that far"
        runs = [r for r in runs_of(client) if r.data.tags.get("rlsweep.phase") == "confirm"
                and r.data.tags.get("rlsweep.kind") == "trial"]
        if any(ready(r, len(client.get_metric_history(r.info.run_id, "rollouts/env_steps"))) for r in runs):
            return
        time.sleep(0.05)


@pytest.mark.slow
def test_ctrl_c_then_sigkill_in_the_confirmation_round_then_resume(tmp_path):
    """A sweep with two seeds per trial and a confirmation round (its best two on two fresh seeds).
    Ctrl-C while the round runs: exit 130 with the resume command, the parent and the cut confirmation
    trial interrupted. `resume`, then SIGKILL while a confirmation trial is part-way, then `resume`
    again: the search is not run again; every run and every step once; the confirmation trials are
    children of the parent marked as such, on seeds no search agent had; the winner is the best
    confirmed configuration, and `best` exports it."""
    from rlsweep.ranking import ranked_rows

    per_trial = 6144
    exp = experiment(tmp_path, steps=per_trial, concurrent=1)
    (tmp_path / "space.yaml").write_text(LR_ONLY)
    proc = _sweep_process(exp, tmp_path / "space.yaml", "conf", "--trials", "2", "--set", "sweep.seeds_per_trial=2",
                          "--set", "sweep.confirm.top=2", "--set", "sweep.confirm.seeds=2")
    client = store_client(tmp_path, "sweeptest", proc)
    sweep_dir = tmp_path / "results" / "conf"
    try:
        _wait_for_confirmation(client, proc, lambda run, n: n >= 2)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 130 and "rlsweep resume" in err, err[-3000:]
        runs = runs_of(client)
        [parent] = [x for x in runs if x.data.tags.get("rlsweep.kind") == "sweep"]
        assert parent.data.tags["rlsweep.status"] == "interrupted" and parent.data.tags["rlsweep.phase"] == "confirm"
        [cut] = [x for x in runs if x.data.tags.get("rlsweep.phase") == "confirm" and x.data.tags.get("rlsweep.kind") == "trial"]
        assert cut.data.tags["rlsweep.status"] == "interrupted"
        search_state = sorted((p.name, p.stat().st_mtime) for p in sweep_dir.glob("experiment_state-*.json"))

        proc = subprocess.Popen([sys.executable, "-m", "rlsweep.cli", "resume", "conf", "--results-dir",
                                 str(tmp_path / "results")], cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True,
                                preexec_fn=lambda: os.nice(10))
        # part-way, past its last checkpoint (every 3 iterations), so that resuming replays iterations
        _wait_for_confirmation(client, proc, lambda run, n: run.data.tags.get("rlsweep.status") == "running"
                               and 4 <= n and n % 3 and n * 512 < per_trial - 512)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    r = rlsweep("resume", "conf", "--results-dir", tmp_path / "results")
    assert r.returncode == 0, r.stderr[-4000:]
    # the search's own Tune state was left as it was: only the round was run again
    assert sorted((p.name, p.stat().st_mtime) for p in sweep_dir.glob("experiment_state-*.json")) == search_state

    runs = runs_of(client)
    [parent] = [x for x in runs if x.data.tags.get("rlsweep.kind") == "sweep"]
    children = [x for x in runs if x.data.tags.get("rlsweep.kind") == "trial"]
    search = [c for c in children if "rlsweep.phase" not in c.data.tags]
    confirming = [c for c in children if c.data.tags.get("rlsweep.phase") == "confirm"]
    assert parent.info.status == "FINISHED" and len(search) == 2 and len(confirming) == 2
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert {c.data.tags["rlsweep.confirms_trial_id"] for c in confirming} == {c.data.tags["rlsweep.trial_id"] for c in search}
    for c in children:  # one run per trial, every step once, though the cut ones replayed iterations
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "rollouts/env_steps")]
        assert steps == list(range(512, per_trial + 1, 512)), (c.info.run_name, steps)
        assert c.info.status == "FINISHED"
    for c in search:  # two agents each, on the experiment's seeds 2 and 3
        assert {k for k in c.data.metrics if k.startswith("evaluation/eval_return_mean/seed_")} == \
            {"evaluation/eval_return_mean/seed_2", "evaluation/eval_return_mean/seed_3"}
    for c in confirming:  # two fresh seeds, far from the search's
        assert {k for k in c.data.metrics if k.startswith("evaluation/eval_return_mean/seed_")} == \
            {"evaluation/eval_return_mean/seed_1000002", "evaluation/eval_return_mean/seed_1000003"}
        assert c.info.run_name.startswith("confirm ")

    ranked = ranked_rows(sweep_dir, "eval_return_mean", "max")
    winner = ranked[0]
    confirmed = {c.data.tags["rlsweep.confirms_trial_id"]: c.data.metrics["evaluation/eval_return_mean"] for c in confirming}
    assert winner["confirmed_eval_return_mean"] == max(confirmed.values()) == confirmed[winner["trial_id"]]
    assert f"best trial:  {winner['number']} (trial id {winner['trial_id']})" in r.stdout
    assert "confirmed:   eval_return_mean = " in r.stdout, r.stdout
    assert parent.data.tags["rlsweep.best_trial_id"] == winner["trial_id"]
    assert parent.data.metrics["confirmed_eval_return_mean"] == winner["confirmed_eval_return_mean"]
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"confirmation.csv", "search_vs_confirmed.png", "results.csv", "best_config.yaml"} <= arts
    checklist = Path(client.download_artifacts(parent.info.run_id, "reproducibility.md", str(tmp_path))).read_text()
    assert "- tuning seeds (the search's agents): 2-3\n" in checklist, checklist
    assert "- confirmation seeds (no search agent had one): 1000002-1000003\n" in checklist, checklist
    out = tmp_path / "best.yaml"
    b = rlsweep("best", sweep_dir, "-o", out)
    assert b.returncode == 0 and "confirmed on fresh seeds" in b.stdout, b.stdout + b.stderr
    assert out.read_text().startswith(f"# best trial {winner['number']} (trial id {winner['trial_id']}) of sweep conf: ")


@pytest.mark.slow
def test_pbt_sweep_clones_perturbs_records_lineage_and_its_schedule_trains(tmp_path):
    """A PBT population of 4 on CartPole: weak trials continue from strong ones with perturbed values;
    MLflow holds who was copied at which step and each perturbed value as a curve; a cloned trial's
    values over its run, exported as an experiment's schedules, train again with `rlsweep train`."""
    from rlsweep.ranking import trial_row
    from rlsweep.tracking.report import best_config_yaml

    exp = experiment(tmp_path, steps=6144)
    (tmp_path / "space.yaml").write_text(LR_ONLY + "ppo.clip: {type: uniform, low: 0.1, high: 0.3}\n")
    r = rlsweep("sweep", exp, "--space", tmp_path / "space.yaml", "--name", "pbt",
                "--set", "sweep.scheduler=pbt", "--set", "sweep.pbt.interval=2048",
                "--set", "sweep.pbt.quantile_fraction=0.5", "--set", "rollouts.num_rollout_workers=0",
                "--set", "resources.learner_cpus=1", "--set", "sweep.max_concurrent=null")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Pre-set value" not in r.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = runs_of(client)
    [parent] = [x for x in runs if x.data.tags.get("rlsweep.kind") == "sweep"]
    assert parent.data.params["scheduler"] == "pbt" and parent.data.params["pbt_interval"] == "2048"
    children = {c.data.tags["rlsweep.trial_id"]: c for c in runs if c.data.tags.get("rlsweep.kind") == "trial"}
    assert len(children) == 4
    cloned = {tid: c for tid, c in children.items() if "rlsweep.pbt.cloned_from" in c.data.tags}
    assert cloned, "no trial of the bottom half was ever copied from the top"
    sweep_dir = tmp_path / "results" / "pbt"
    for tid, run in cloned.items():
        tags = run.data.tags
        source = tags["rlsweep.pbt.cloned_from"]
        assert source in children and source != tid
        assert tags["rlsweep.pbt.cloned_from_run"] == children[source].info.run_id
        assert tags["rlsweep.pbt.lineage"].split()[-1] == f"{source}@{tags['rlsweep.pbt.cloned_at_env_steps']}"
        assert int(tags["rlsweep.pbt.cloned_at_env_steps"]) % 2048 == 0  # synchronous: at an interval's end
    # each perturbed value is a curve: a copied trial's runs on new values from where it was copied
    tid, run = next(iter(cloned.items()))
    history = {k: {int(m.step): m.value for m in client.get_metric_history(run.info.run_id, f"hp/ppo.{k}")}
               for k in ("lr", "clip")}
    # (stepwise series: their first and last iterations, and both sides of each change, `tracking.series`)
    assert all({512, 6144} <= set(v) for v in history.values()), history
    assert len(set(history["lr"].values())) > 1 or len(set(history["clip"].values())) > 1, history
    assert not any(k.startswith("hp/ppo.gamma") for k in run.data.metrics)  # only what the space perturbs
    # its values over the run, as a runnable experiment: `rlsweep train` follows them
    row = trial_row(sweep_dir / f"trial_{tid}")
    text = best_config_yaml(row, "pbt", "eval_return_mean")
    schedules = yaml.safe_load(text)["schedules"]
    assert set(schedules) <= {"ppo.lr", "ppo.clip"} and schedules, text
    # the sweep's parent holds its winner's file, with the winner's schedule (or none, if it never changed)
    best = rlsweep("best", sweep_dir, "-o", tmp_path / "best.yaml")
    assert best.returncode == 0, best.stderr
    artifact = client.download_artifacts(parent.info.run_id, "best_config.yaml", str(tmp_path))
    assert yaml.safe_load(Path(artifact).read_text()).get("schedules") == \
        yaml.safe_load((tmp_path / "best.yaml").read_text()).get("schedules")
    (tmp_path / "replay.yaml").write_text(text)
    (tmp_path / "replay").mkdir()
    t = rlsweep("train", tmp_path / "replay.yaml", "--set", f"tracking.local_dir={tmp_path / 'replay'}")
    assert t.returncode == 0, t.stderr[-3000:]
    replay = MlflowClient(f"sqlite:///{tmp_path / 'replay' / 'mlflow.db'}")
    [train_run] = runs_of(replay)
    for key, points in schedules.items():
        curve = {int(m.step): m.value for m in replay.get_metric_history(train_run.info.run_id, f"hp/{key}")}
        assert {512, 6144} <= set(curve), curve
        for step in range(512, 6145, 512):  # the value of the update after step - 512 env steps, as drawn:
            expected = [v for s, v in points if s <= step - 512][-1]  # the points either side of a step
            before, after = max(s for s in curve if s <= step), min(s for s in curve if s >= step)
            assert curve[before] == pytest.approx(expected) == curve[after], (key, step, curve, points)
