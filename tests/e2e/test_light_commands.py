"""`rlsweep evaluate` and `rlsweep best` work from files alone: they never import Ray or Tune."""

import json
import subprocess
import sys

import yaml

from rlsweep.config import validate
from rlsweep.engine.training import Training
from rlsweep.engine.workers import LocalWorkers
from rlsweep.ppo import checkpoint
from tests.conftest import ROOT, small_config

CHECK = ("import sys; from rlsweep.cli import main; code = main({argv!r}); "
         "loaded = sorted(m for m in ('ray', 'ray.tune') if m in sys.modules); "
         "assert not loaded, f'imported {{loaded}}'; sys.exit(code)")


def run(argv, cwd):
    return subprocess.run([sys.executable, "-c", CHECK.format(argv=[str(a) for a in argv])], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT / "platform"), "PATH": "/usr/bin:/bin", "HOME": str(cwd)})


def test_evaluate_a_checkpoint_without_ray(tmp_path):
    cfg = validate(small_config(workers=0))
    t = Training(cfg, LocalWorkers(cfg))
    t.iterate()
    checkpoint.write(tmp_path / "ckpt", *t.state())
    t.close()
    r = run(["evaluate", tmp_path / "ckpt", "--episodes", "3"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "CartPole-v1: 3 episodes, deterministic actions, seed 0" in r.stdout
    assert "eval_return_mean" in r.stdout
    for seed in ("-1", "2147483648"):  # every seed argument is checked alike: one line, exit 2
        r = run(["evaluate", tmp_path / "ckpt", "--seed", seed], tmp_path)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and lines == [f"rlsweep: error: --seed {seed}: expected a whole number from 0 to "
                                               "2147483647"], r.stderr


def test_evaluate_writes_a_video_and_never_overwrites_a_file(tmp_path):
    """`evaluate --video FILE.gif`: the GIF of a deterministic episode, described in one line; a file
    already there, another suffix or a missing folder is one line and exit 2, the file untouched."""
    from PIL import Image

    cfg = validate(small_config(workers=0))
    t = Training(cfg, LocalWorkers(cfg))
    t.iterate()
    checkpoint.write(tmp_path / "ckpt", *t.state())
    t.close()
    out = tmp_path / "play.gif"
    r = run(["evaluate", tmp_path / "ckpt", "--episodes", "2", "--video", out], tmp_path)
    assert r.returncode == 0, r.stderr
    [line] = [x for x in r.stdout.splitlines() if x.startswith("video: ")]
    with Image.open(out) as im:
        frames = im.n_frames
    assert line.startswith(f"video: {out} ({frames} frames, ") and " KiB; the whole episode, return " in line, line
    assert frames >= 2 and out.stat().st_size > 1_000
    before = out.read_bytes()
    for target, fragment in [(out, "the file exists; it is not overwritten"),
                             (tmp_path / "play.mp4", "expected a file name ending in .gif"),
                             (tmp_path / "no" / "such" / "play.gif", "does not exist")]:
        r = run(["evaluate", tmp_path / "ckpt", "--video", target], tmp_path)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and fragment in lines[0] and "--video" in lines[0], r.stderr
        assert "eval_return_mean" not in r.stdout  # refused before any episode
    assert out.read_bytes() == before and not (tmp_path / "play.mp4").exists()


def test_a_registered_model_plays_in_a_fresh_process_and_a_planted_pickle_is_refused(tmp_path):
    """`evaluate models:/NAME@champion` (a SQLite store's registry) in a process of its own, without Ray;
    then a pickle planted in the model's learner.pt (its checksum forged too) is refused in one line,
    and its payload never runs."""
    import hashlib
    import os
    import pickle

    from rlsweep.tracking import model
    from rlsweep.tracking.store import Store

    cfg = validate(small_config(workers=0))
    t = Training(cfg, LocalWorkers(cfg))
    t.iterate()
    checkpoint.write(tmp_path / "ckpt", *t.state())
    t.close()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Store(uri, "exp").tracker()
    parent = tracker.start("parent", {})
    assert model.log_and_register(tracker, parent, tmp_path / "ckpt", "cartpole") == "cartpole version 1 (@champion)"
    r = run(["evaluate", "models:/cartpole@champion", "--tracking-uri", uri, "--episodes", "2"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("CartPole-v1: 2 episodes, deterministic actions, seed 0") and "eval_return_mean" in r.stdout

    folder = model.build(tmp_path / "ckpt", tmp_path / "model")
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    learner = folder / "checkpoint" / checkpoint.LEARNER_FILE
    learner.write_bytes(pickle.dumps(Payload()))
    state = json.loads((folder / "checkpoint" / checkpoint.STATE_FILE).read_text())
    state["learner_sha256"] = hashlib.sha256(learner.read_bytes()).hexdigest()
    (folder / "checkpoint" / checkpoint.STATE_FILE).write_text(json.dumps(state))
    r = run(["evaluate", folder], tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "learner.pt is not a weights-only file; refused, nothing in it was run" in lines[0]
    assert not marker.exists() and "eval_return_mean" not in r.stdout


def test_evaluate_says_whether_the_policy_meets_the_experiments_target(tmp_path):
    """The verdict against stop.target_return, on the episodes just played (a trial stops at the first
    evaluation that reaches its target: fresh episodes can fall short of it)."""
    for target in (1.0, 10_000.0):
        cfg = validate(small_config(workers=0, stop={"target_return": target, "env_steps": 1024}))
        t = Training(cfg, LocalWorkers(cfg))
        t.iterate()
        checkpoint.write(tmp_path / f"ckpt{target:g}", *t.state())
        t.close()
        r = run(["evaluate", tmp_path / f"ckpt{target:g}", "--episodes", "3"], tmp_path)
        assert r.returncode == 0, r.stderr
        verdict = r.stdout.strip().splitlines()[-1]
        if target == 1.0:
            assert verdict.startswith("target: meets the experiment's target return 1 (eval_return_mean "), verdict
        else:
            assert verdict.startswith("target: below the experiment's target return 10000 on these episodes "
                                      "(eval_return_mean "), verdict


def test_evaluate_a_checkpoint_of_three_agents(tmp_path):
    """A trial's checkpoint of 3 agents: each plays the episodes on its own seed; the IQM (here the mean),
    its interval, extremes and each agent's value are printed."""
    cfg = validate(small_config(workers=0, seed=5, sweep={"seeds_per_trial": 3}))
    t = Training(cfg, LocalWorkers(cfg))
    t.iterate()
    checkpoint.write(tmp_path / "ckpt", *t.state())
    t.close()
    r = run(["evaluate", tmp_path / "ckpt", "--episodes", "3", "--seed", "7"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "CartPole-v1: 3 agents (seeds 7..9) x 3 episodes, deterministic actions, seed 7" in r.stdout
    values = dict(line.split() for line in r.stdout.splitlines()[1:])
    each = [float(values[f"eval_return_mean/seed_{s}"]) for s in (7, 8, 9)]
    assert abs(float(values["eval_return_mean"]) - sum(each) / 3) < 1e-3 * max(1.0, abs(sum(each)))
    assert float(values["eval_return_mean_min"]) == min(each) and float(values["eval_return_mean_max"]) == max(each)


def test_best_of_a_sweep_directory_without_ray(tmp_path):
    sweep = tmp_path / "results" / "s1"
    sweep.mkdir(parents=True)
    (sweep / "rlsweep_sweep.json").write_text(json.dumps({"name": "s1", "metric": "eval_return_mean", "mode": "max"}))
    for tid, ret, steps, lr in [("x_00000", 500.0, 20_000, 0.001), ("x_00001", 500.0, 13_000, 0.002),
                                ("x_00002", 200.0, 5_000, 0.003)]:
        (sweep / f"trial_{tid}").mkdir()
        config = small_config(ppo={"lr": lr})
        lines = [{"trial_id": tid, "eval_return_mean": 0.0, "env_steps": 64, "config": config},
                 {"trial_id": tid, "eval_return_mean": ret, "env_steps": steps, "config": config}]
        (sweep / f"trial_{tid}" / "result.json").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    r = run(["best", "s1", "-o", tmp_path / "best.yaml"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "trial x_00001" in r.stdout  # the tie at 500 goes to fewer env steps
    best = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert best["ppo"]["lr"] == 0.002 and best["name"] == "s1-best"


def test_best_refuses_bad_outputs_and_corrupt_records(tmp_path):
    sweep = tmp_path / "results" / "s2"
    sweep.mkdir(parents=True)
    (sweep / "rlsweep_sweep.json").write_text(json.dumps({"name": "s2", "metric": "eval_return_mean", "mode": "max"}))
    (sweep / "trial_a").mkdir()
    (sweep / "trial_a" / "result.json").write_text(json.dumps({"trial_id": "a", "eval_return_mean": 1.0,
                                                               "config": small_config()}) + "\n")
    (tmp_path / "link.yaml").symlink_to(tmp_path / "nowhere.yaml")
    cases = [
        (["-o", tmp_path / "no" / "such" / "dir" / "best.yaml"], "does not exist"),
        (["-o", tmp_path / "link.yaml"], "file exists; rlsweep never overwrites it"),
    ]
    for extra, fragment in cases:
        r = run(["best", "s2", *extra], tmp_path)
        assert r.returncode == 2 and fragment in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "nowhere.yaml").exists()  # nothing was written through the dangling link

    (sweep / "trial_a" / "result.json").write_text('{"trial_id": "a", "eval_ret')
    r = run(["best", "s2"], tmp_path)
    assert r.returncode == 2 and "the last result is not valid" in r.stderr, r.stderr
    (sweep / "rlsweep_sweep.json").write_text("{not json")
    r = run(["best", "s2"], tmp_path)
    assert r.returncode == 2 and "not readable as a sweep record" in r.stderr, r.stderr


def test_non_utf8_experiment_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("name: caf\xe9\n".encode("latin-1"))
    r = run(["train", bad], tmp_path)
    assert r.returncode == 2 and "not UTF-8 text" in r.stderr and "Traceback" not in r.stderr, r.stderr
