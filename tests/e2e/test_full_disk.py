"""A results folder on a full disk (a real tmpfs, mounted in a mount namespace of the test's own): one
line naming it, the run stopped as for Ctrl-C, its last whole checkpoint kept and usable, and a sweep
that goes on once there is space again."""

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import RLSWEEP, ROOT, cli_env

EXP = """\
name: fulldisk
seed: 3
env: {{id: CartPole-v1}}
policy: {{hidden_sizes: [64, 64]}}
ppo: {{train_batch_size: 256, minibatch_size: 128, num_epochs: 2}}
rollouts: {{num_rollout_workers: 0, num_envs_per_worker: 8}}
evaluation: {{interval: 4, episodes: 3}}
stop: {{env_steps: {steps}}}
resources: {{learner_cpus: 1}}
checkpoint_frequency: 1
tracking: {{local_dir: {store}}}
sweep: {{search_space: {space}, trials: 2, metric: eval_return_mean, mode: max, keep_checkpoints: 2,
        n_startup_trials: 2}}
"""
SPACE = "ppo.lr: {type: loguniform, low: 0.001, high: 0.003}\n"
MARK = "=== next command ==="


def in_a_small_disk(tmp_path: Path, size: str, commands: list[str], ballast_kib: int = 0) -> list[tuple[int, str]]:
    """Runs `commands` one after another (shell lines; DISK in them is the mount point) with a tmpfs of
    `size` mounted at DISK, in a mount namespace of their own; `ballast_kib` of it filled by a file,
    DISK/ballast, that a command may remove to make space. After the last, DISK is copied to
    tmp_path/disk (the mount ends with the namespace). Returns each command's (exit code, output)."""
    disk = tmp_path / "disk-mount"
    disk.mkdir()
    script = ["set -e", f"mount -t tmpfs -o size={size} rlsweep-test {disk}"]
    if ballast_kib:
        script.append(f"head -c {ballast_kib * 1024} /dev/zero > {disk}/ballast")
    script.append("set +e")
    for command in commands:
        script += [f"echo '{MARK}'", f"{command.replace('DISK', str(disk))} 2>&1; echo \"exit=$?\""]
    script.append(f"cp -a {disk} {tmp_path / 'disk'}")
    unshare = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--mount"]
    r = subprocess.run([*unshare, "--propagation", "private", "sh", "-c", "\n".join(script)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT, env=cli_env())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = []
    for part in r.stdout.split(MARK)[1:]:
        text, code = part.rsplit("exit=", 1)
        out.append((int(code.strip()), text.strip()))
    return out


def copied(path: str, tmp_path: Path) -> Path:
    """Where a path on the small disk is in the copy made after the commands."""
    return Path(path.replace(str(tmp_path / "disk-mount"), str(tmp_path / "disk")))


def experiment(tmp_path: Path, steps: int) -> Path:
    (tmp_path / "space.yaml").write_text(SPACE)
    exp = tmp_path / "exp.yaml"
    exp.write_text(EXP.format(steps=steps, store=tmp_path, space=tmp_path / "space.yaml"))
    return exp


def test_train_onto_a_full_disk_is_one_line_naming_the_disk_and_its_last_whole_checkpoint(tmp_path):
    """`train` writes a checkpoint every iteration into a 400 KiB disk until it is full: the run stops
    as for Ctrl-C (exit 130) with no traceback; the line names the disk and the last checkpoint, which
    is whole (the one a full disk cut short is not it) and restores; the MLflow run says why."""
    from mlflow.tracking import MlflowClient

    from rlsweep.ppo.checkpoint import check, is_whole, load_policy

    exp = experiment(tmp_path, steps=50_000)
    [(code, out)] = in_a_small_disk(tmp_path, "400k", [f"{' '.join(RLSWEEP)} train {exp} --set results_dir=DISK"])
    assert code == 130, out
    assert "Traceback" not in out and "Error" not in out, out
    line = next(x for x in out.splitlines() if x.startswith("interrupted after"))
    assert f"results_dir {tmp_path / 'disk-mount'} is full (no space left on device)" in line, out
    named = re.search(r"keeps its last whole checkpoint, (\S+?)\)", line).group(1)
    assert line.endswith(f"--restore {named}"), line
    kept = copied(named, tmp_path)
    check(kept)  # whole: files there, checksum right
    assert load_policy(kept)[1]["actor"][0].shape == (1, 4, 64)
    later = sorted(kept.parent.glob("checkpoint_*"), key=lambda p: int(p.name.split("_")[1]))
    assert all(not is_whole(p) for p in later[later.index(kept) + 1:]), later  # what the disk cut short, if any

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("fulldisk").experiment_id])
    assert run.info.status == "KILLED" and run.data.tags["rlsweep.status"] == "interrupted"
    assert "is full (no space left on device)" in run.data.tags["rlsweep.reason"], run.data.tags


@pytest.mark.slow
def test_a_sweep_on_a_full_disk_is_interrupted_and_resumes_once_there_is_space(tmp_path):
    """A sweep fills its disk (a ballast file holds most of it): interrupted, one line naming the disk,
    no traceback; the ballast removed, `rlsweep resume` finishes both trials from where they were."""
    exp = experiment(tmp_path, steps=4096)
    cli = " ".join(RLSWEEP)
    (code, out), (resumed, later) = in_a_small_disk(
        tmp_path, "3m", [f"{cli} sweep {exp} --name full --set results_dir=DISK",
                         f"rm DISK/ballast && {cli} resume full --results-dir DISK"], ballast_kib=2400)
    assert code == 130, out
    assert "Traceback" not in out, out
    assert f"results_dir {tmp_path / 'disk-mount'} is full (no space left on device)" in out, out
    assert re.search(r"sweep full interrupted .*; continue it with: .* resume ", out), out
    assert resumed == 0, later
    assert "Traceback" not in later and "sweep full done: 2 trials finished, 0 failed" in later, later
